#!/bin/bash
# The installer's main job, end to end: on the installer guest with an empty
# disk, `nixos-anywhere-rs --flake fixtures/demo#demo --phases
# disko,install,reboot --extra-files DIR` partitions and formats the disk
# from the configuration's disko.devices, streams the closure into /mnt, does
# what nixos-install does and the system's own switch-to-configuration boot,
# and reboots; the disk then boots alone under OVMF (fresh NVRAM) on the same
# forwarded port, where the tool's own wait finds it and checks that it runs
# the installed toplevel. First, a run stopped after `install` leaves the
# file systems mounted: the full command then runs again on that
# half-installed machine. The extra files' modes and owners, --chown, and
# the installed store (read back on the host, through Nix's verify) are
# checked on the disk.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"
source "$VM_TESTS_DIR/lib/install.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo)
extra=$(install_extra_files)

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
port=$(vm_port inst)

# A run that stops after the install phase: everything stays mounted.
t=$SECONDS
install_run "$tool" "$VM_RUN_DIR/first.json" --flake "$DEMO_REPO/fixtures/demo#demo" \
	--phases disko,install --extra-files "$extra" --chown /srv/data 1000:100 \
	-i "$VM_KEY" -p "$port" root@127.0.0.1
echo "disko,install took $((SECONDS - t)) s"
vm_ssh inst root 'grep -c " /mnt" /proc/mounts; readlink /mnt/nix/var/nix/profiles/system-1-link' |
	sed 's/^/  after the first run: /'
[[ $(vm_ssh inst root 'readlink /mnt/nix/var/nix/profiles/system-1-link') == "$top" ]] ||
	fail "the first run left no system profile"

# The whole command on the half-installed machine: it must not find anything
# busy or ask anything; the reboot ends the installer's qemu (-no-reboot), and
# the disk boots on the same port while the tool waits.
t=$SECONDS
install_run "$tool" "$VM_RUN_DIR/second.json" --flake "$DEMO_REPO/fixtures/demo#demo" \
	--phases disko,install,reboot --extra-files "$extra" --chown /srv/data 1000:100 \
	-i "$VM_KEY" -p "$port" root@127.0.0.1 &
tool_pid=$!
vm_wait_exit inst 1200
echo "the installer rebooted after $((SECONDS - t)) s"
vm_boot_disk booted uefi "$(vm_disk inst 0)" "$port" --reboot
wait "$tool_pid" || fail "the install failed (see above)"
echo "disko,install,reboot and the wait took $((SECONDS - t)) s"
install_check_record "$VM_RUN_DIR/second.json" "$top" disko install reboot
demo_check_booted booted "$top"
[[ $DEMO_FIRMWARE == uefi ]] || fail "not booted through UEFI"
grep -q 'stage 1: mounting /dev/vda2 (disk-main-root)' "$(vm_serial booted)" ||
	fail "stage 1 did not find the root by its partition label"
demo_check_switch booted
install_check_extra_files booted 1000:100
vm_ssh booted root poweroff || true
vm_wait_exit booted 120
demo_verify_disk "$(vm_disk inst 0)"
echo "installed by the tool, booted under OVMF, verified by its own wait and by Nix"
