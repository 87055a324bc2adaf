#!/bin/bash
# The install fails safely, in one installer guest: a bootloader step that
# exits non-zero, and one that succeeds but leaves the ESP without a loader,
# each fail the run with the step named, and the machine is not rebooted. A
# disk-encryption key given as a pipe is written once, 0600, in the
# installer's RAM, and appears in no process's argument list on either side
# (every execve traced) and in no log line. A stream cut during the install
# (the tool killed while the closure is on its way) leaves no system profile
# and no boot loader entry; the rerun completes. Its system, which has no
# authorized key, boots and refuses the tool's login after the reboot phase:
# installed, not verified, exit status 0.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"
source "$VM_TESTS_DIR/lib/demo.sh"
source "$VM_TESTS_DIR/lib/install.sh"

tool=$("$DEMO_REPO/scripts/build-static" --locked)
top=$(demo_build demo)
demo_build demo-failing-bootloader > /dev/null
demo_build demo-no-bootloader > /dev/null
flake=$DEMO_REPO/fixtures/demo

vm_start inst --image installer --disk 2G
vm_wait_ssh inst root
port=$(vm_port inst)
target=(-i "$VM_KEY" -p "$port" root@127.0.0.1)

# install_fails NAME STEP...: the install of configuration NAME fails, its
# error names the install step whose description contains STEP, and the
# installer still runs.
install_fails() {
	local name=$1 step=$2 json=$VM_RUN_DIR/$1.json
	if install_run "$tool" "$json" --flake "$flake#$name" --phases disko,install,reboot \
		"${target[@]}"; then
		fail "the install of $name succeeded"
	fi
	grep -q "error: install phase: .*install step [0-9]* ($step)" "$json.log" ||
		fail "the failure of $name does not name the step '$step': $(grep error: "$json.log")"
	sleep 5
	vm_running inst || fail "the installer rebooted after the failed install of $name"
	vm_ssh inst root true || fail "the installer does not answer after the failed install of $name"
	grep error: "$json.log" | head -3 | sed "s/^/  $name: /"
}
install_fails demo-failing-bootloader 'run /nix/store/.*/bin/switch-to-configuration boot'
install_fails demo-no-bootloader 'check that a boot loader is installed'
grep -q 'no boot loader after the bootloader step' "$VM_RUN_DIR/demo-no-bootloader.json.log" ||
	fail "the missing loader is not explained"

# Every execve in the installer, from sshd down, while the tool runs with a
# key from a pipe; and every execve of the tool's side.
key="nixos-anywhere-rs-test-key-$RANDOM$RANDOM$RANDOM"
vm_ssh inst root 'strace -f -qq -s 4096 -e trace=execve -o /run/trace.log \
	-p "$(cat /run/sshd.pid 2> /dev/null || pidof -s sshd)" > /dev/null 2>&1 &
	for i in $(seq 50); do [ -s /run/trace.log ] && break; sleep 0.1; done'
json=$VM_RUN_DIR/cut.json
INSTALL_TRACE=$VM_RUN_DIR/host-trace.log install_run "$tool" "$json" --flake "$flake#demo" \
	--phases disko,install --disk-encryption-keys /tmp/keys/secret.key <(printf %s "$key") \
	"${target[@]}" &
tool_pid=$!
# Cut the stream once the first store path is in the new /mnt (the disko
# phase made it anew: the earlier runs' store is gone).
for _ in $(seq 600); do
	grep -q '==> install: streaming' "$json.log" 2> /dev/null && break
	sleep 0.2
done
for _ in $(seq 600); do
	n=$(vm_ssh inst root 'ls /mnt/nix/store 2> /dev/null | grep -vc "\.tmp\|^\." || true')
	((n > 0)) && break
	sleep 0.2
done
kill -9 "$tool_pid" 2> /dev/null || true
# strace -f leaves the traced tool's children to be killed too.
pkill -9 -f "$tool .*--flake" 2> /dev/null || true
wait "$tool_pid" 2> /dev/null && fail "the tool finished before the stream was cut"
echo "  cut the stream with $n store path(s) in /mnt"
left=$(vm_ssh inst root 'sleep 3; ls /mnt/nix/var/nix/profiles 2> /dev/null; ls /mnt/boot/loader/entries /mnt/boot/EFI 2> /dev/null; true')
[[ $left != *system* ]] || fail "a cut install left a system profile: $left"
[[ $left != *nixos-generation* ]] || fail "a cut install left a boot loader entry: $left"

# The key: written once from the pipe, 0600, on a tmpfs.
out=$(vm_ssh inst root 'stat -c "%a %u" /tmp/keys/secret.key; stat -f -c %T /tmp/keys; cat /tmp/keys/secret.key')
[[ $out == *"600 0"* && $out == *"$key"* ]] || fail "the key was not written 0600: $out"
grep -Eq 'tmpfs|ramfs' <<< "$out" || fail "the key is not in RAM: $out"

# The rerun completes.
install_run "$tool" "$VM_RUN_DIR/rerun.json" --flake "$flake#demo" --phases install "${target[@]}"
jq -r '.phases[0].copied | "  rerun: sent \(.paths_sent), already there \(.paths_skipped)"' \
	"$VM_RUN_DIR/rerun.json"
[[ $(vm_ssh inst root 'readlink /mnt/nix/var/nix/profiles/system-1-link') == "$top" ]] ||
	fail "the rerun left no system profile"

# --store-paths with a disko script (Terraform's nixos_partitioner): its
# closure goes into the installer's own store, and it runs there.
printf '#!/bin/sh\necho "disko stand-in ran as $(id -u)" > /tmp/disko-stand-in.ran\n' \
	> "$VM_RUN_DIR/disko-stand-in"
chmod +x "$VM_RUN_DIR/disko-stand-in"
script=$(NIX_REMOTE=local nix-store --add "$VM_RUN_DIR/disko-stand-in")
install_run "$tool" "$VM_RUN_DIR/script.json" --store-paths "$script" "$top" --phases disko \
	"${target[@]}"
[[ $(vm_ssh inst root "cat /tmp/disko-stand-in.ran; ls $script") == "disko stand-in ran as 0"*"$script" ]] ||
	fail "the disko script did not run from the installer's store"
echo "  the disko script ran from the installer's store"

vm_ssh inst root 'kill $(pidof strace); sleep 1; cat /run/trace.log' > "$VM_RUN_DIR/guest-trace.log"
execs=$(grep -c execve "$VM_RUN_DIR/guest-trace.log")
((execs > 10)) || fail "the guest trace caught only $execs execve calls"
host_execs=$(grep -c execve "$VM_RUN_DIR/host-trace.log")
((host_execs > 3)) || fail "the host trace caught only $host_execs execve calls"
echo "  traced $execs execve calls in the installer, $host_execs on the host"
for f in guest-trace.log host-trace.log cut.json.log cut.json rerun.json.log script.json.log; do
	! grep -qF "$key" "$VM_RUN_DIR/$f" || fail "the key appears in $f"
done

# The rerun installed no authorized key (no --extra-files): the installed
# system boots but refuses the login. That is "installed, not verified", exit
# status 0, so that an orchestrator does not reinstall it.
install_run "$tool" "$VM_RUN_DIR/unverified.json" --flake "$flake#demo" --phases reboot \
	--reboot-deadline 5m "${target[@]}" &
tool_pid=$!
vm_wait_exit inst 300
vm_boot_disk booted uefi "$(vm_disk inst 0)" "$port"
wait "$tool_pid" || fail "a system that refuses the login failed the run"
[[ $(jq -r .verified.result "$VM_RUN_DIR/unverified.json") == not_verified ]] ||
	fail "not reported as not verified: $(jq -c .verified "$VM_RUN_DIR/unverified.json")"
grep 'installed, not verified' "$VM_RUN_DIR/unverified.json.log" | sed 's/^/  /'
vm_stop booted
echo "failures named their step and left the installer up; the key stayed secret; a cut install resumed; a locked-out system is installed, not verified"
