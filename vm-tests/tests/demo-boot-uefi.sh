#!/bin/bash
# The demo system (fixtures/demo#demo) boots from the disk it was installed
# on, before the installer exists: in the installer guest, the disk is
# partitioned and formatted as its disko layout says, the closure streamed in
# with the tool's copy, and the system's own activate and
# switch-to-configuration boot run in a chroot (vm-tests/lib/demo.sh). Then
# the disk alone boots under OVMF with fresh NVRAM (systemd-boot from the
# ESP's removable-media path, the demo's stage 1 finding the root by its
# partition label) on the installer's forwarded port, and SSH shows the
# installed toplevel. The store read back on the host passes Nix's verify.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo)

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
t=$SECONDS
demo_install inst demo "$top" "$tool"
echo "installed $top in $((SECONDS - t)) s"

# The guest reboots in place (--reboot), as a real server does, with the
# panic guard on.
t=$SECONDS
vm_boot_disk booted uefi "$(vm_disk inst 0)" "$(vm_port inst)" --reboot
vm_wait_ssh booted root 300
echo "the installed disk booted to SSH in $((SECONDS - t)) s"
demo_check_booted booted "$top"
[[ $DEMO_FIRMWARE == uefi ]] || fail "not booted through UEFI"
grep -q 'stage 1: mounting /dev/vda2 (disk-main-root)' "$(vm_serial booted)" ||
	fail "stage 1 did not find the root by its partition label"
demo_check_switch booted

# A reboot goes through the firmware and systemd-boot again, into the same
# system; a kernel panic then ends qemu instead of rebooting.
vm_ssh booted root reboot || true
vm_wait_ssh_gone booted 60
vm_wait_ssh booted root 300
vm_running booted || fail "qemu ended on a reboot despite --reboot"
[[ $(grep -c 'stage 2: booting' "$(vm_serial booted)") == 2 ]] || fail "the guest did not boot twice"
demo_check_booted booted "$top" > /dev/null
# The session ends with the guest.
vm_ssh booted root 'echo c > /proc/sysrq-trigger' || true
vm_wait_exit booted 60
grep -q 'Kernel panic' "$(vm_serial booted)" || fail "qemu ended, but not on a panic"
[[ $(grep -c 'stage 2: booting' "$(vm_serial booted)") == 2 ]] || fail "the panicked guest rebooted"

demo_verify_disk "$(vm_disk inst 0)"
echo "the demo system boots from its disk under OVMF, and Nix accepts its store"
