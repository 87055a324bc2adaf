#!/bin/bash
# Streams the small fixture closure into the installer, which has no Nix, with the fully static
# executable as its own agent, onto an ext4 filesystem mounted at /mnt as an install would; a
# rerun sends nothing. The store root is then brought back to the host, where Nix 2.8 must
# accept it (`nix-store --verify --check-contents`) and list the same closure. Before that, the
# agent's facts must say what the guest is: an x86_64 NixOS installer with a 2 GiB virtio disk
# mounted at /mnt.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
repo=$(cd "$(dirname "$0")/../.." && pwd)

tool=$("$repo/scripts/build-static" --locked)
top=$("$repo/fixtures/closure" small)

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
vm_ssh inst root 'if command -v nix-store >/dev/null; then echo "the installer has Nix"; exit 1; fi
	mkfs.ext4 -q -F /dev/vda && mkdir -p /mnt && mount /dev/vda /mnt'

facts=$(NIXOS_ANYWHERE_RS_AGENT=$tool "$tool" facts "root@127.0.0.1" -p "$(vm_port inst)" -i "$VM_KEY")
echo "facts: $(jq -c '{arch, kernel, is_installer, uid, memory, disks: [.disks[] | {name, size_bytes, mounts}]}' <<< "$facts")"
jq -e '.arch == "x86_64" and .is_installer and .uid == 0 and .os.variant_id == "installer"' <<< "$facts" > /dev/null ||
	fail "the facts do not describe an x86_64 NixOS installer logged into as root"
jq -e '.disks[] | select(.name == "vda") | .size_bytes == 2147483648 and .logical_sector_size == 512 and .mounts == ["/mnt"]' \
	<<< "$facts" > /dev/null || fail "the facts do not show vda (2 GiB, mounted at /mnt)"
jq -e '.memory.total_bytes > 0 and ([.interfaces[].addresses[]] | index("127.0.0.1"))' <<< "$facts" > /dev/null ||
	fail "the facts lack memory or addresses"

copy() {
	NIXOS_ANYWHERE_RS_AGENT=$tool "$tool" copy --json --to "ssh://root@127.0.0.1:$(vm_port inst)" \
		-i "$VM_KEY" --root /mnt "$top"
}
first=$(copy)
echo "first copy: $first"
closure_size=$(nix-store -qR "$top" | wc -l)
[[ $(jq .paths_sent <<< "$first") == "$closure_size" ]] || fail "expected $closure_size paths sent"
second=$(copy)
echo "second copy: $second"
[[ $(jq .paths_sent <<< "$second") == 0 ]] || fail "a rerun sent paths again"

back=$VM_RUN_DIR/back
mkdir -p "$back"
vm_ssh inst root 'sync && tar -C /mnt -cf - nix' | tar -C "$back" -xf -
nix-store --option build-users-group '' --verify --check-contents --store "$back" 2> "$VM_RUN_DIR/verify.log" ||
	{ cat "$VM_RUN_DIR/verify.log"; fail "Nix rejects the store the agent wrote"; }
if grep -Eq 'error|modified|invalid' "$VM_RUN_DIR/verify.log"; then
	cat "$VM_RUN_DIR/verify.log"
	fail "nix-store --verify complained"
fi
listed=$(nix --extra-experimental-features nix-command path-info --store "$back" -r "$top" | wc -l)
[[ $listed == "$closure_size" ]] || fail "Nix lists $listed paths of the closure there, not $closure_size"
echo "the installer's /mnt holds the closure of $top, and Nix accepts it"
