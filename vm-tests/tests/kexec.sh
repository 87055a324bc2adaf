#!/bin/bash
# From the "other Linux", as its sudo user, runs the kexec tarball the way
# nixos-anywhere does; then logs into the installer as root with the same
# key, checking that the host key, the machine-id and the static network
# configuration survived the kexec.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"

vm_start target --image other
vm_wait_ssh target debian
host_key=$(vm_host_key target)
machine_id=$(vm_ssh target debian cat /etc/machine-id)
# A static address and route, as a cloud VM might have.
vm_ssh target debian 'sudo ip addr add 192.168.77.1/24 dev eth0 &&
	sudo ip route add 192.168.78.0/24 via 192.168.77.254 dev eth0'

images_ensure
vm_ssh target debian mkdir -p kexec
vm_copy_to target debian "$IMAGES_DIR/kexec-installer.tar.gz" kexec/kexec-tarball.tar.gz
log=$(vm_ssh target debian 'cd ~/kexec && tar -x --gzip < kexec-tarball.tar.gz &&
	TMPDIR=~/kexec sudo setsid --wait ~/kexec/kexec/run 2>&1')
echo "$log"
[[ $log == *"machine will boot into nixos"* ]] || fail "kexec/run did not print its success marker"
started=$SECONDS

vm_wait_ssh_gone target
# known_hosts pins the old host key: this login fails if it changed.
vm_wait_ssh target root
echo "from kexec/run returning to a root login: $((SECONDS - started)) s"

[[ $(vm_ssh target root '. /etc/os-release && echo "$ID $VARIANT_ID"') == "nixos installer" ]] ||
	fail "not the installer after kexec"
[[ $(vm_host_key target) == "$host_key" ]] || fail "host key changed"
[[ $(vm_ssh target root cat /etc/machine-id) == "$machine_id" ]] || fail "machine-id changed"
[[ $(vm_ssh target root ip -4 addr show dev eth0) == *"inet 192.168.77.1/24"* ]] ||
	fail "static address not restored"
[[ $(vm_ssh target root ip route show 192.168.78.0/24) == *"via 192.168.77.254"* ]] ||
	fail "static route not restored"
