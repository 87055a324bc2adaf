#!/bin/bash
# The kexec phase's failures, each stopped with a message that says what
# happened and what to do, and nothing changed that should not be (issue 13).
#
# One "other Linux" with a marked disk:
# - the tarball is given as an http:// URL on this host's loopback, which the
#   target cannot reach: its wget fails and the tool downloads it and streams
#   it up; the tarball's kexec/run does not carry the host keys over, so the
#   installer comes up with a new one: the run stops naming both
#   fingerprints, before any disk is touched (the marker is still there);
#   the machine-id and the static address and route were carried over;
# - on that installer (kexec skipped), --generate-hardware-config with a
#   stand-in nixos-generate-config that writes noise to stderr: the file
#   holds its stdout alone, and git knows it; nixos-facter is missing: said;
# - kexec switched off (kernel.kexec_load_disabled=1): --force-kexec is
#   refused before anything is written.
# Another boots with lockdown=integrity: refused, nothing written.
# A second one never comes back: qemu is stopped right after kexec/run's
# marker, and the run fails at --kexec-deadline with the remedy.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"
source "$VM_TESTS_DIR/lib/install.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
flake="$DEMO_REPO/fixtures/demo#demo"
demo_build demo > /dev/null
images_ensure

# A tarball whose kexec/run leaves the host keys behind.
www=$VM_RUN_DIR/www
mkdir -p "$www/unpacked"
tar -x --gzip -C "$www/unpacked" -f "$IMAGES_DIR/kexec-installer.tar.gz"
sed -i 's|^for f in /etc/ssh/ssh_host_\*; do$|for f in; do|' "$www/unpacked/kexec/run"
grep -q '^for f in; do$' "$www/unpacked/kexec/run" || fail "could not take the host keys out of kexec/run"
tar -c --gzip -C "$www/unpacked" -f "$www/new-host-key.tar.gz" kexec
http_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$www" "$http_port" > "$VM_RUN_DIR/http.log" 2>&1 &
http_pid=$!
trap 'kill "$http_pid" 2> /dev/null || true; vm_cleanup' EXIT

vm_start machine --image other --disk 1G
vm_wait_ssh machine debian
port=$(vm_port machine)
vm_ssh machine debian 'printf "nixos-anywhere-rs disk marker" | sudo dd of=/dev/vda status=none &&
	sudo ip addr add 192.168.77.1/24 dev eth0 &&
	sudo ip route add 192.168.78.0/24 via 192.168.77.254 dev eth0'
machine_id=$(vm_ssh machine debian cat /etc/machine-id)
old_fp=$(ssh-keygen -lf - <<< "$(vm_host_key machine)" | awk '{print $2}')

if install_run "$tool" "$VM_RUN_DIR/new-key.json" --flake "$flake" \
	--kexec "http://127.0.0.1:$http_port/new-host-key.tar.gz" \
	-i "$VM_KEY" -p "$port" --post-kexec-ssh-port "$port" debian@127.0.0.1; then
	fail "the run went on with another host key"
fi
log=$VM_RUN_DIR/new-key.json.log
grep -q "could not download it (wget ended with exit status 4)" "$log" ||
	fail "the target's own download (wget, a network failure) was not tried first"
grep -q "GET /new-host-key.tar.gz" "$VM_RUN_DIR/http.log" || fail "this machine did not download it"
vm_forget_host_key machine
vm_wait_ssh machine root
new_fp=$(ssh-keygen -lf - <<< "$(vm_host_key machine)" | awk '{print $2}')
[[ $new_fp != "$old_fp" ]] || fail "the installer kept the old host key after all"
grep -q "presents the host key ssh-ed25519 $new_fp, not ssh-ed25519 $old_fp" "$log" ||
	fail "the error does not name both fingerprints"
grep -q "stopped before any disk was touched" "$log" || fail "the error does not say the disks are untouched"
grep -q -- "--accept-new-host-key-after-kexec" "$log" || fail "the error names no way out"
grep -E '^==> (disko|install)' "$log" && fail "a phase after kexec started"
[[ $(vm_ssh machine root 'head -c 29 /dev/vda') == "nixos-anywhere-rs disk marker" ]] ||
	fail "the disk was touched"
[[ $(vm_ssh machine root '. /etc/os-release && echo "$ID $VARIANT_ID"') == "nixos installer" ]] ||
	fail "not the installer after kexec"
[[ $(vm_ssh machine root cat /etc/machine-id) == "$machine_id" ]] || fail "machine-id changed"
[[ $(vm_ssh machine root ip -4 addr show dev eth0) == *"inet 192.168.77.1/24"* ]] ||
	fail "static address not restored"
[[ $(vm_ssh machine root ip route show 192.168.78.0/24) == *"via 192.168.77.254"* ]] ||
	fail "static route not restored"
echo "a changed host key after kexec stopped the run, naming both; disk untouched"

# Accepted when the user says so: a forced kexec from the installer into an
# installer with yet another key.
install_run "$tool" "$VM_RUN_DIR/accepted.json" --flake "$flake" --phases kexec --force-kexec \
	--kexec "http://127.0.0.1:$http_port/new-host-key.tar.gz" --accept-new-host-key-after-kexec \
	-i "$VM_KEY" -p "$port" --post-kexec-ssh-port "$port" root@127.0.0.1 || fail "--accept-new-host-key-after-kexec did not accept it"
vm_forget_host_key machine
third_fp=$(ssh-keygen -lf - <<< "$(vm_host_key machine)" | awk '{print $2}')
[[ $third_fp != "$new_fp" ]] || fail "the second kexec kept the key"
grep -q "answers as root, host key ssh-ed25519 $third_fp" "$VM_RUN_DIR/accepted.json.log" ||
	fail "the run did not pin the new key"
[[ $(vm_ssh machine root cat /etc/machine-id) == "$machine_id" ]] || fail "machine-id changed"
echo "--accept-new-host-key-after-kexec: the new key was pinned"

# The hardware configuration, on the installer: only the tool's stdout.
vm_ssh machine root 'cat > /usr/bin/nixos-generate-config && chmod 755 /usr/bin/nixos-generate-config' <<'SCRIPT'
#!/bin/sh
[ "$*" = "--show-hardware-config --no-filesystems" ] || { echo "wrong arguments: $*" >&2; exit 2; }
echo "writing progress to stderr, as tools do" >&2
printf '{ ... }: {\n  boot.initrd.availableKernelModules = [ "virtio_pci" ];\n}\n'
SCRIPT
hw=$VM_RUN_DIR/config
mkdir -p "$hw" && git -C "$hw" init -q
install_run "$tool" "$VM_RUN_DIR/hw.json" --flake "$flake" --phases kexec \
	--generate-hardware-config nixos-generate-config "$hw/hosts/machine/hardware-configuration.nix" \
	-i "$VM_KEY" -p "$port" root@127.0.0.1 || fail "--generate-hardware-config failed"
[[ $(cat "$hw/hosts/machine/hardware-configuration.nix") == \
	$'{ ... }: {\n  boot.initrd.availableKernelModules = [ "virtio_pci" ];\n}' ]] ||
	fail "the hardware configuration is not the tool's output alone"
git -C "$hw" ls-files --error-unmatch hosts/machine/hardware-configuration.nix > /dev/null ||
	fail "git does not know the hardware configuration"
[[ $(jq -r '.phases[0].ran' "$VM_RUN_DIR/hw.json") == false ]] || fail "kexec ran on an installer"
if install_run "$tool" "$VM_RUN_DIR/facter.json" --flake "$flake" --phases kexec \
	--generate-hardware-config nixos-facter "$hw/facter.json" \
	-i "$VM_KEY" -p "$port" root@127.0.0.1; then
	fail "nixos-facter ran where there is none"
fi
grep -q "has no nixos-facter" "$VM_RUN_DIR/facter.json.log" || fail "the missing nixos-facter was not named"
[[ ! -e $hw/facter.json ]] || fail "a file was written without a tool"
echo "the hardware configuration holds the tool's output alone"

# kexec switched off: refused before anything is written.
vm_ssh machine root 'echo 1 > /proc/sys/kernel/kexec_load_disabled'
if install_run "$tool" "$VM_RUN_DIR/disabled.json" --flake "$flake" --phases kexec --force-kexec \
	--kexec "$IMAGES_DIR/kexec-installer.tar.gz" -i "$VM_KEY" -p "$port" root@127.0.0.1; then
	fail "kexec went on although it is switched off"
fi
grep -q "kexec is switched off until the next boot" "$VM_RUN_DIR/disabled.json.log" ||
	fail "the refusal does not say why"
vm_ssh machine root 'test ! -e /root/kexec' || fail "the refused kexec left files behind"
vm_stop machine
echo "kexec_load_disabled: refused, nothing written"

# A kernel in lockdown (as Secure Boot turns it on) loads no unsigned kernel:
# refused before anything is written. securityfs is mounted as systemd does.
vm_start locked --image other --append lockdown=integrity
vm_wait_ssh locked debian
vm_ssh locked debian 'sudo mount -t securityfs securityfs /sys/kernel/security &&
	cat /sys/kernel/security/lockdown' | sed 's/^/  lockdown: /'
if install_run "$tool" "$VM_RUN_DIR/locked.json" --flake "$flake" \
	--kexec "$IMAGES_DIR/kexec-installer.tar.gz" -i "$VM_KEY" -p "$(vm_port locked)" debian@127.0.0.1; then
	fail "kexec went on under lockdown"
fi
grep -q "the kernel is locked down (integrity, as with Secure Boot)" "$VM_RUN_DIR/locked.json.log" ||
	fail "the refusal does not name the lockdown"
vm_ssh locked debian 'test ! -e ~/kexec' || fail "the refused kexec left files behind"
vm_stop locked
echo "lockdown: refused, nothing written"

# The machine never comes back: the run ends at its deadline.
vm_start lost --image other
vm_wait_ssh lost debian
lost_port=$(vm_port lost)
install_run "$tool" "$VM_RUN_DIR/lost.json" --flake "$flake" \
	--kexec "$IMAGES_DIR/kexec-installer.tar.gz" --kexec-deadline 45s \
	-i "$VM_KEY" -p "$lost_port" --post-kexec-ssh-port "$lost_port" debian@127.0.0.1 &
tool_pid=$!
deadline=$((SECONDS + 300))
until grep -q 'machine will boot into nixos' "$VM_RUN_DIR/lost.json.log" 2> /dev/null; do
	((SECONDS < deadline)) || fail "kexec/run printed no marker"
	kill -0 "$tool_pid" 2> /dev/null || fail "the tool ended before kexec/run's marker"
	sleep 0.5
done
vm_stop lost
t=$SECONDS
if wait "$tool_pid"; then
	fail "the run succeeded without the machine"
fi
echo "the run ended $((SECONDS - t)) s after the machine was stopped"
((SECONDS - t <= 120)) || fail "the run waited far past its deadline"
grep -q "did not answer as the installer within 45 s" "$VM_RUN_DIR/lost.json.log" ||
	fail "the failure does not say it waited in vain"
grep -q -- "--post-kexec-ssh-host" "$VM_RUN_DIR/lost.json.log" || fail "the failure names no remedy"
echo "a machine that never came back ended the run at the deadline"
