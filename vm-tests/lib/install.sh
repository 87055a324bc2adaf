# The installer under test (issue 12): runs of nixos-anywhere-rs against a
# guest, and checks of what they left. Source it after harness.sh and
# demo.sh.

# install_extra_files: makes a directory for --extra-files and prints it:
# root's authorized key (the test key, so the installed system can be
# logged into), a file of mode 0640, and /srv/data for --chown.
install_extra_files() {
	local dir=$VM_RUN_DIR/extra-files
	mkdir -p "$dir/root/.ssh" "$dir/srv/data/sub" "$dir/etc"
	chmod 0700 "$dir/root/.ssh"
	cp "$VM_KEY.pub" "$dir/root/.ssh/authorized_keys"
	chmod 0600 "$dir/root/.ssh/authorized_keys"
	echo "extra file" > "$dir/etc/demo-extra"
	chmod 0640 "$dir/etc/demo-extra"
	echo data > "$dir/srv/data/sub/file"
	ln -sfn sub/file "$dir/srv/data/link"
	echo "$dir"
}

# install_run TOOL JSON ARG...: runs the tool with ARG... (its --json record
# into JSON, its stderr also into JSON.log), with the options the local Nix
# needs here (root, no build users, no sandbox, no substituters), and the
# static build as the agent. With INSTALL_TRACE=FILE, every execve of the
# tool and its children is traced into FILE.
install_run() {
	local tool=$1 json=$2 trace=()
	shift 2
	if [[ -n ${INSTALL_TRACE:-} ]]; then
		trace=(strace -f -qq -s 4096 -e trace=execve -o "$INSTALL_TRACE")
	fi
	NIX_REMOTE=local NIXOS_ANYWHERE_RS_AGENT=$tool "${trace[@]}" "$tool" "$@" --json \
		--option build-users-group '' --option sandbox false --option substituters '' \
		> "$json" 2> >(tee "$json.log" >&2)
}

# install_check_record JSON TOPLEVEL PHASE...: the run's --json record lists
# exactly PHASE... in order, and its wait found TOPLEVEL running.
install_check_record() {
	local json=$1 top=$2
	shift 2
	local phases
	phases=$(jq -r '[.phases[].phase] | join(",")' "$json")
	[[ $phases == "$(IFS=,; echo "$*")" ]] || fail "the record lists the phases $phases, not $*"
	[[ $(jq -r '.verified.result' "$json") == running ]] ||
		fail "the tool did not verify the installed system: $(jq -c .verified "$json")"
	[[ $(jq -r '.verified.system' "$json") == "$top" ]] || fail "the tool verified another system"
	jq -r '.phases[] | "  \(.phase): \(.seconds * 10 | floor / 10) s, \(.steps | length) steps"
		+ if .agent_peak_rss_kib then ", agent peak RSS \(.agent_peak_rss_kib / 1024 | floor) MiB" else "" end' "$json"
}

# install_check_extra_files GUEST [OWNER]: the extra files are on the booted
# GUEST with their modes, owned by root, /srv/data (recursively, links
# themselves) owned by OWNER (the run's --chown; default root, 0:0), and / is
# mode 755.
install_check_extra_files() {
	local out owner=${2:-0:0}
	out=$(vm_ssh "$1" root 'stat -c "%n %a %u:%g" / /root/.ssh /root/.ssh/authorized_keys \
		/etc/demo-extra /srv/data /srv/data/sub/file; stat -c "%n %u:%g" /srv/data/link')
	echo "$out" | sed 's/^/  extra files: /'
	grep -qx '/ 755 0:0' <<< "$out" || fail "/ is not mode 755 owned by root"
	grep -qx '/root/.ssh 700 0:0' <<< "$out" || fail "/root/.ssh lost its mode or owner"
	grep -qx '/root/.ssh/authorized_keys 600 0:0' <<< "$out" || fail "authorized_keys lost its mode"
	grep -qx '/etc/demo-extra 640 0:0' <<< "$out" || fail "a 0640 extra file lost its mode"
	grep -qx "/srv/data 755 $owner" <<< "$out" || fail "/srv/data is not owned by $owner"
	grep -qx "/srv/data/sub/file 644 $owner" <<< "$out" || fail "/srv/data/sub/file is not owned by $owner"
	grep -qx "/srv/data/link $owner" <<< "$out" || fail "the link /srv/data/link is not owned by $owner"
}
