#!/bin/bash
# Issue 13's end to end, in one qemu process with 512 MiB of RAM, as on a
# small server: the "other Linux" (a stand-in for a Debian cloud VM) boots
# from its own disk under OVMF; `nixos-anywhere-rs --flake fixtures/demo#demo
# --kexec TARBALL debian@HOST`, logged in as its sudo user, streams the
# harness's kexec tarball up, kexecs into the installer, comes back as root
# with the same key and host key, wipes and partitions that same disk,
# installs, and reboots through the firmware into the installed system, whose
# SSH answers with the installed toplevel. Prints the figures the note and
# the README quote: the phases' times, the agent's peak RSS and the lowest
# available memory the agent saw.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"
source "$VM_TESTS_DIR/lib/install.sh"

mem=${KEXEC_INSTALL_MEM:-512}
tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo)
extra=$(install_extra_files)

disk=$VM_RUN_DIR/machine.raw
vm_image_disk "$disk" 2G other
vm_boot_disk machine uefi "$disk" '' --reboot --mem "$mem"
vm_wait_ssh machine debian 300
port=$(vm_port machine)
old_key=$(ssh-keygen -lf - <<< "$(vm_host_key machine)" | awk '{print $2}')
[[ $(vm_ssh machine debian '. /etc/os-release && echo "$ID"') == debian ]] || fail "not the other Linux"
vm_ssh machine debian 'grep -E "^Mem(Total|Available)" /proc/meminfo' | sed 's/^/  before: /'

t=$SECONDS
install_run "$tool" "$VM_RUN_DIR/run.json" --flake "$DEMO_REPO/fixtures/demo#demo" \
	--kexec "$IMAGES_DIR/kexec-installer.tar.gz" --extra-files "$extra" \
	-i "$VM_KEY" -p "$port" --post-kexec-ssh-port "$port" debian@127.0.0.1 ||
	fail "the install from the other Linux failed (see above)"
echo "the whole run took $((SECONDS - t)) s on $mem MiB"
vm_running machine || fail "qemu ended: the machine did not reboot in place"
install_check_record "$VM_RUN_DIR/run.json" "$top" kexec disko install reboot
jq -r '.phases[] | select(.phase == "kexec") | .steps[] | "  kexec step: \(.description)"' \
	"$VM_RUN_DIR/run.json"
[[ $(jq -r '.phases[0].ran' "$VM_RUN_DIR/run.json") == true ]] || fail "the kexec phase did not run"
grep -q "answers as root, host key ssh-ed25519 $old_key" "$VM_RUN_DIR/run.json.log" ||
	fail "the installer did not present the old system's host key"
grep -q 'machine will boot into nixos' "$VM_RUN_DIR/run.json.log" ||
	fail "the progress did not show kexec/run's output"
low=$(jq -r '.phases[] | select(.phase == "install") | .lowest_available_kib' "$VM_RUN_DIR/run.json")
rss=$(jq -r '.phases[] | select(.phase == "install") | .agent_peak_rss_kib' "$VM_RUN_DIR/run.json")
echo "on $mem MiB: agent peak RSS $((rss / 1024)) MiB, lowest available memory $((low / 1024)) MiB"

vm_forget_host_key machine
demo_check_booted machine "$top"
[[ $DEMO_FIRMWARE == uefi ]] || fail "not booted through UEFI"
[[ $(grep -c 'BdsDxe: starting' "$(vm_serial machine)") -ge 2 ]] ||
	fail "the installed system did not boot through the firmware"
vm_ssh machine root poweroff || true
vm_wait_exit machine 120
demo_verify_disk "$disk"
echo "from the other Linux to the installed NixOS on $mem MiB, in one qemu process"
