#!/bin/bash
# Boots the "other Linux" (a stand-in for a Debian cloud VM) and becomes root
# on it each way a user of it can (issue 14): the harness's login debian by
# password-less sudo; alice, who logs in by password only, by sudo with that
# password; dora by doas with `nopass`. As alice and as dora the tool's agent
# runs as root and copies a closure into a directory only root may write to,
# which Nix then accepts; a rerun sends nothing. doug's doas wants a password,
# which doas reads only from a terminal: refused with the remedy, nothing
# changed. No argument list of the tool and its children, and no log line of
# its most verbose output, carries the password.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
repo=$(cd "$(dirname "$0")/../.." && pwd)

tool=$("$repo/scripts/build-static" --locked)
top=$("$repo/fixtures/closure" small)
closure_size=$(nix-store -qR "$top" | wc -l)

vm_start other --image other
vm_wait_ssh other debian
port=$(vm_port other)

[[ $(vm_ssh other debian '. /etc/os-release && echo "$ID $VERSION_ID"') == "debian 12" ]] ||
	fail "os-release does not say Debian 12"
[[ $(vm_ssh other debian id -un) == debian ]] || fail "not logged in as debian"
[[ $(vm_ssh other debian sudo -n id -u) == 0 ]] || fail "sudo did not give root"
if vm_ssh other root true 2> /dev/null; then
	fail "root logged in with the user's key"
fi
vm_ssh other debian 'command -v tar && command -v gzip && command -v cpio &&
	setsid --wait true' > /dev/null || fail "tar, gzip, cpio or setsid --wait missing"
# dora and doug log in with the test key; alice has none.
vm_ssh other debian 'for u in dora doug; do
	sudo install -d -o $u -g $u -m 0700 /home/$u/.ssh &&
	sudo install -o $u -g $u -m 0600 ~/.ssh/authorized_keys /home/$u/.ssh/; done'

# copy USER OUT [ARG...]: the tool's copy into /srv/USER as USER, its --json
# summary into OUT, its trace-level log into OUT.log, every execve of it and
# its children into OUT.strace.
copy() {
	local user=$1 out=$2
	shift 2
	SSHPASS=$OTHER_PASSWORD NIXOS_ANYWHERE_RS_AGENT=$tool \
		strace -f -qq -s 4096 -e trace=execve -o "$out.strace" \
		"$tool" copy -vv --json --to "ssh://$user@127.0.0.1:$port" --root "/srv/$user" \
		-o UserKnownHostsFile="$VM_RUN_DIR/known_hosts.tool" -o StrictHostKeyChecking=accept-new \
		"$@" "$top" > "$out" 2> "$out.log"
}

# no_password FILE...: none of the files holds the password.
no_password() {
	local file
	for file; do
		! grep -qF "$OTHER_PASSWORD" "$file" || fail "$file carries the password"
	done
}

# check_copy USER: the store root /srv/USER is root's, Nix accepts it and lists
# the closure, and a rerun sends nothing.
check_copy() {
	local user=$1 back=$VM_RUN_DIR/back-$1 owner listed
	shift
	[[ $(jq .paths_sent "$VM_RUN_DIR/$user.json") == "$closure_size" ]] ||
		fail "$user: expected $closure_size paths sent: $(cat "$VM_RUN_DIR/$user.json")"
	owner=$(vm_ssh other debian stat -c %U "/srv/$user/nix/store" "/srv/$user/nix/var/nix/db/db.sqlite")
	[[ $owner == $'root\nroot' ]] || fail "$user: the store is not root's: $owner"
	mkdir -p "$back"
	vm_ssh other debian "sudo tar -C /srv/$user -cf - nix" | tar -C "$back" -xf -
	nix-store --option build-users-group '' --verify --check-contents --store "$back" \
		> "$back.verify" 2>&1 || { cat "$back.verify"; fail "$user: Nix rejects the store"; }
	! grep -Eq 'error|modified|invalid' "$back.verify" || { cat "$back.verify"; fail "$user: nix-store --verify complained"; }
	listed=$(nix --extra-experimental-features nix-command path-info --store "$back" -r "$top" | wc -l)
	[[ $listed == "$closure_size" ]] || fail "$user: Nix lists $listed paths, not $closure_size"

	copy "$user" "$VM_RUN_DIR/$user.again.json" "$@" ||
		{ cat "$VM_RUN_DIR/$user.again.json.log"; fail "$user: the rerun failed"; }
	[[ $(jq .paths_sent "$VM_RUN_DIR/$user.again.json") == 0 ]] || fail "$user: a rerun sent paths again"
	no_password "$VM_RUN_DIR/$user".*
	echo "$user: the agent ran as root, the copy into /srv/$user verifies, a rerun sent nothing"
}

# alice: a password login (which leaves a temporary key), then sudo with it.
copy alice "$VM_RUN_DIR/alice.json" --env-password ||
	{ cat "$VM_RUN_DIR/alice.json.log"; fail "the copy as alice (sudo with a password) failed"; }
[[ $(vm_ssh other debian sudo wc -l /home/alice/.ssh/authorized_keys) == 1\ * ]] ||
	fail "the password login left no temporary key for alice"
check_copy alice --env-password

# dora: the test key, then doas -n.
copy dora "$VM_RUN_DIR/dora.json" -i "$VM_KEY" ||
	{ cat "$VM_RUN_DIR/dora.json.log"; fail "the copy as dora (doas nopass) failed"; }
check_copy dora -i "$VM_KEY"

# doug: doas wants his password, from a terminal only.
if copy doug "$VM_RUN_DIR/doug.json" -i "$VM_KEY"; then
	fail "the copy as doug went ahead though doas needs a terminal"
fi
grep -q 'doas needs a password.*nopass' "$VM_RUN_DIR/doug.json.log" ||
	{ cat "$VM_RUN_DIR/doug.json.log"; fail "doug's refusal does not name the remedy"; }
[[ -z $(vm_ssh other debian ls -A /srv/doug) ]] || fail "the refused copy changed /srv/doug"
no_password "$VM_RUN_DIR"/doug.*
echo "doug: refused before anything changed: $(grep -o 'doas needs.*' "$VM_RUN_DIR/doug.json.log" | head -1)"
