# The demo systems (fixtures/demo): building them, their layouts, and checks
# of a guest booted from a disk they were installed on (vm-tests/lib/install.sh
# runs the installer). Source it after harness.sh. See fixtures/demo/README.md.

DEMO_REPO=$(cd "$VM_TESTS_DIR/.." && pwd)

# demo_build CONFIG: builds the demo system CONFIG (demo, demo-bios) and
# prints its toplevel.
demo_build() { "$DEMO_REPO/fixtures/demo/build" "$1"; }

# demo_layout CONFIG: the configuration's disko.devices as JSON, evaluated
# the way the installer evaluates it.
demo_layout() {
	nix --extra-experimental-features 'nix-command flakes' eval --json \
		"$DEMO_REPO/fixtures/demo#nixosConfigurations.$1.config.disko.devices" \
		2> >(grep -v -e "warning: Git tree '.*' is dirty" -e "group 'nixbld'" >&2 || true)
}

# demo_check_booted GUEST TOPLEVEL: the booted GUEST runs TOPLEVEL: its
# /run/current-system and /run/booted-system are TOPLEVEL, nixos-version
# answers with TOPLEVEL's version; prints what it checked.
demo_check_booted() {
	local guest=$1 top=$2 out
	out=$(vm_ssh "$guest" root 'readlink /run/current-system; readlink /run/booted-system;
		nixos-version; . /etc/os-release; echo "$ID"; cat /proc/cmdline;
		if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi')
	echo "$out" | sed 's/^/  booted: /'
	local current booted version id cmdline firmware
	{
		read -r current
		read -r booted
		read -r version
		read -r id
		read -r cmdline
		read -r firmware
	} <<< "$out"
	[[ $current == "$top" ]] || fail "/run/current-system is $current, not $top"
	[[ $booted == "$top" ]] || fail "/run/booted-system is $booted, not $top"
	[[ $version == "$(cat "$top/nixos-version")" ]] || fail "nixos-version says $version"
	[[ $id == nixos ]] || fail "os-release ID is $id"
	[[ $cmdline == *"init=$top/init"* ]] || fail "not booted with init=$top/init: $cmdline"
	DEMO_FIRMWARE=$firmware
}

# demo_check_switch GUEST: on the booted GUEST, the partitions are named in
# /dev/disk/by-partlabel, the other filesystems of fileSystems (the ESP) are
# mounted, and the system's own switch-to-configuration boot succeeds there,
# as for a nixos-rebuild boot.
demo_check_switch() {
	local out
	out=$(vm_ssh "$1" root 'set -e; ls /dev/disk/by-partlabel; cat /etc/fstab
		while read -r dev at rest; do
			awk -v at="$at" '\''$2 == at {found = 1} END {exit !found}'\'' /proc/mounts ||
				{ echo "$at is not mounted"; exit 1; }
		done < /etc/fstab
		/run/current-system/bin/switch-to-configuration boot 2>&1 && echo switched') ||
		{ echo "$out"; fail "switch-to-configuration boot failed on the booted system"; }
	echo "$out" | sed 's/^/  switch: /'
	grep -qx disk-main-root <<< "$out" || fail "no /dev/disk/by-partlabel/disk-main-root"
}

# demo_verify_disk FILE: the installed store on disk FILE, read back on the
# host, passes `nix-store --verify --check-contents`. The root partition
# (found by its label in the GPT) is attached read-only by its offset, not
# through partition nodes that other loop users on this host may leave stale,
# and mounted without replaying its journal (a guest that panicked left it
# unclean); its /nix is copied out, as Nix 2.8 cannot open a read-only store.
demo_verify_disk() {
	local file=$1 start size dev mnt=$VM_RUN_DIR/diskroot back=$VM_RUN_DIR/back
	read -r start size < <(sfdisk -J "$file" | jq -r '.partitiontable as $t
		| $t.partitions[] | select(.name == "disk-main-root")
		| "\(.start * ($t.sectorsize // 512)) \(.size * ($t.sectorsize // 512))"')
	[[ -n ${size:-} ]] || fail "no partition labelled disk-main-root on $file"
	dev=$(losetup --find --show --read-only --offset "$start" --sizelimit "$size" "$file")
	echo "$dev" >> "$VM_RUN_DIR/loops"
	mkdir -p "$mnt" "$back"
	mount -t ext4 -o ro,noload "$dev" "$mnt"
	cp -a "$mnt/nix" "$back/"
	umount "$mnt"
	nix-store --option build-users-group '' --verify --check-contents --store "$back" \
		> "$VM_RUN_DIR/verify.log" 2>&1 ||
		{ cat "$VM_RUN_DIR/verify.log"; fail "Nix rejects the installed store"; }
	if grep -Eq 'error|modified|invalid' "$VM_RUN_DIR/verify.log"; then
		cat "$VM_RUN_DIR/verify.log"
		fail "nix-store --verify complained about the installed store"
	fi
}
