#!/bin/bash
# The harness's pieces for a machine that is installed over in place (issue
# 13 item 4): the "other Linux" boots under OVMF from a disk of its own
# (vm_image_disk), a reboot goes through the firmware back into it in the
# same qemu process (--reboot), its disk is free to repartition, and a kernel
# panic ends qemu (the pvpanic guard) instead of rebooting.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"

disk=$VM_RUN_DIR/other.raw
vm_image_disk "$disk" 2G other
vm_boot_disk other uefi "$disk" '' --reboot
vm_wait_ssh other debian 300
vm_ssh other debian 'test -d /sys/firmware/efi && grep -q "^ID=debian" /etc/os-release' ||
	fail "not the other Linux, booted through UEFI"
# Nothing of the disk is in use: the kernel re-reads its partition table
# (BLKRRPART fails with EBUSY while a partition is open).
vm_ssh other debian 'sudo /usr/sbin/blockdev --rereadpt /dev/vda' || fail "the disk is busy in the other Linux"

vm_ssh other debian 'sudo reboot' || true
vm_wait_ssh_gone other 60
vm_running other || fail "qemu ended on a reboot despite --reboot"
vm_wait_ssh other debian 300
[[ $(grep -c 'BdsDxe: starting' "$(vm_serial other)") == 2 ]] ||
	fail "the guest did not boot twice through the firmware"

vm_ssh other debian 'sudo sh -c "echo c > /proc/sysrq-trigger"' || true
vm_wait_exit other 60
grep -q 'Kernel panic' "$(vm_serial other)" || fail "qemu ended, but not on a panic"
echo "the other Linux boots from its disk, reboots in place, and a panic ends qemu"
