#!/bin/bash
# The BIOS demo system (fixtures/demo#demo-bios) boots from the disk it was
# installed on: as demo-boot-uefi, but the layout has a BIOS boot partition
# (EF02), the system's switch-to-configuration runs grub-install into the
# MBR of boot.loader.grub.devices and writes grub.cfg, and SeaBIOS boots the
# disk.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo-bios)

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
t=$SECONDS
demo_install inst demo-bios "$top" "$tool"
echo "installed $top in $((SECONDS - t)) s"
dd if="$(vm_disk inst 0)" bs=440 count=1 status=none | grep -q GRUB ||
	fail "the disk's MBR holds no GRUB"

t=$SECONDS
vm_boot_disk booted bios "$(vm_disk inst 0)" "$(vm_port inst)"
vm_wait_ssh booted root 300
echo "the installed disk booted to SSH in $((SECONDS - t)) s"
demo_check_booted booted "$top"
[[ $DEMO_FIRMWARE == bios ]] || fail "booted through UEFI, not the BIOS"
grep -q 'stage 1: mounting /dev/vda2 (disk-main-root)' "$(vm_serial booted)" ||
	fail "stage 1 did not find the root by its partition label"
demo_check_switch booted
vm_ssh booted root poweroff || true
vm_wait_exit booted 60

demo_verify_disk "$(vm_disk inst 0)"
echo "the BIOS demo system boots from its disk under SeaBIOS, and Nix accepts its store"
