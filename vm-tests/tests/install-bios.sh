#!/bin/bash
# The BIOS variant of install-uefi, from store paths: the layout evaluated to
# JSON and the toplevel of fixtures/demo#demo-bios are given with
# --store-paths (as Terraform's module does), the layout has a BIOS boot
# partition (EF02), the system's switch-to-configuration installs GRUB into
# the MBR (the tool checks that it is there), and SeaBIOS boots the disk on
# the installer's port. With --copy-host-keys the installed system keeps the
# installer's host key, which the tool's wait sees. The closure is read with
# --from from a file:// binary cache the test fills (tests/copy_from.rs shows
# that --from reads only there).
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"
source "$VM_TESTS_DIR/lib/install.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo-bios)
demo_layout demo-bios > "$VM_RUN_DIR/layout.json"
extra=$(install_extra_files)
cache=file://$VM_RUN_DIR/cache
NIX_REMOTE=local nix --extra-experimental-features nix-command copy --no-check-sigs \
	--to "$cache?compression=zstd" "$top"

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
port=$(vm_port inst)
installer_key=$(vm_ssh inst root 'cat /etc/ssh/ssh_host_ed25519_key.pub' | cut -d' ' -f2)

t=$SECONDS
install_run "$tool" "$VM_RUN_DIR/run.json" --store-paths "$VM_RUN_DIR/layout.json" "$top" \
	--phases disko,install,reboot --extra-files "$extra" --copy-host-keys --from "$cache" \
	-i "$VM_KEY" -p "$port" root@127.0.0.1 &
tool_pid=$!
vm_wait_exit inst 1200
echo "the installer rebooted after $((SECONDS - t)) s"
dd if="$(vm_disk inst 0)" bs=440 count=1 status=none | grep -q GRUB ||
	fail "the disk's MBR holds no GRUB"
vm_boot_disk booted bios "$(vm_disk inst 0)" "$port"
wait "$tool_pid" || fail "the install failed (see above)"
echo "disko,install,reboot and the wait took $((SECONDS - t)) s"
install_check_record "$VM_RUN_DIR/run.json" "$top" disko install reboot
grep -q "streaming the closure of $top from the store $cache into /mnt" "$VM_RUN_DIR/run.json.log" ||
	fail "the closure was not read from the cache given with --from"
grep -q 'GRUB in the MBR of /dev/vda' "$VM_RUN_DIR/run.json" ||
	fail "the tool did not report GRUB in the MBR: $(jq -c '.phases[1].note' "$VM_RUN_DIR/run.json")"
[[ $(jq -r .verified.same_host_key "$VM_RUN_DIR/run.json") == true ]] ||
	fail "--copy-host-keys: the installed system has another host key"
[[ $(vm_ssh booted root 'cat /etc/ssh/ssh_host_ed25519_key.pub' | cut -d' ' -f2) == "$installer_key" ]] ||
	fail "--copy-host-keys: the installer's key is not on the disk"
demo_check_booted booted "$top"
[[ $DEMO_FIRMWARE == bios ]] || fail "booted through UEFI, not the BIOS"
grep -q 'stage 1: mounting /dev/vda2 (disk-main-root)' "$(vm_serial booted)" ||
	fail "stage 1 did not find the root by its partition label"
demo_check_switch booted
install_check_extra_files booted
vm_ssh booted root poweroff || true
vm_wait_exit booted 120
demo_verify_disk "$(vm_disk inst 0)"
echo "installed from store paths, GRUB in the MBR, booted under SeaBIOS, verified"
