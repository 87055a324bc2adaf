#!/bin/bash
# Smoke test of the harness's --uefi option: the host builds a GPT disk whose
# ESP holds systemd-boot (from systemd-boot-efi), Debian's kernel and the
# "other Linux" initrd; OVMF boots it, and the user logs in.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
images_ensure

disk=$VM_RUN_DIR/uefi.raw
truncate -s 128M "$disk"
sgdisk -n 1:1M:0 -t 1:ef00 -c 1:ESP "$disk" > /dev/null
read -r start sectors < <(partx -g -o START,SECTORS -n 1 "$disk")

# The ESP is built as a file with mtools (this host cannot mount vfat), then
# written into the partition.
esp=$VM_RUN_DIR/esp.raw
mkfs.vfat -F 32 -n ESP -C "$esp" $((sectors / 2)) > /dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
# The removable-media path: OVMF boots it with no boot entries in its NVRAM.
mcopy -i "$esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$IMAGES_DIR/other/bzImage" ::/vmlinuz
vm_initrd_with_key other > "$VM_RUN_DIR/initrd"
mcopy -i "$esp" "$VM_RUN_DIR/initrd" ::/initrd
printf 'timeout 0\ndefault vm-test.conf\n' > "$VM_RUN_DIR/loader.conf"
mcopy -i "$esp" "$VM_RUN_DIR/loader.conf" ::/loader/loader.conf
printf 'title vm-test\nlinux /vmlinuz\ninitrd /initrd\noptions %s vm-test-entry\n' \
	"$GUEST_CMDLINE" > "$VM_RUN_DIR/entry.conf"
mcopy -i "$esp" "$VM_RUN_DIR/entry.conf" ::/loader/entries/vm-test.conf
dd if="$esp" of="$disk" bs=512 seek="$start" conv=notrunc status=none

vm_start uefi --uefi --disk-file "$disk"
vm_wait_ssh uefi debian 300

vm_ssh uefi debian test -d /sys/firmware/efi || fail "not booted through UEFI"
[[ $(vm_ssh uefi debian cat /proc/cmdline) == *vm-test-entry* ]] ||
	fail "not booted from the systemd-boot entry"
