#!/bin/bash
# Boots the installer image and logs in as root with the test key; checks
# that it identifies as a NixOS installer, has its tools, and refuses
# another key.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"

vm_start inst --image installer
vm_wait_ssh inst root

[[ $(vm_ssh inst root '. /etc/os-release && echo "$ID $VARIANT_ID"') == "nixos installer" ]] ||
	fail "os-release does not say ID=nixos VARIANT_ID=installer"
[[ $(vm_ssh inst root id -u) == 0 ]] || fail "not logged in as root"
vm_ssh inst root 'for t in kexec ip jq sfdisk sgdisk wipefs blkid lsblk cryptsetup lvm mdadm \
	mkfs.ext4 mkfs.xfs mkfs.btrfs mkfs.vfat parted tar gzip xz zstd cpio setsid; do
	command -v "$t" > /dev/null || { echo "missing: $t"; exit 1; }; done'

other_key=$VM_RUN_DIR/other_key
ssh-keygen -q -t ed25519 -N '' -f "$other_key"
if ssh -i "$other_key" -o IdentitiesOnly=yes -o BatchMode=yes \
	-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
	-p "$(vm_port inst)" root@127.0.0.1 true 2> /dev/null; then
	fail "a key that is not authorized logged in"
fi
