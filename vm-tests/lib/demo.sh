# The demo system's install, done by hand in the installer guest: what the
# installer (issue 12) will do natively, in shell, to prove that the fixture
# boots from the disk it was installed on before the tool can install it.
# Source it after harness.sh. See fixtures/demo/README.md.

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

# demo__format_script LAYOUT_JSON: a shell script for the installer that
# partitions the layout's one disk as the layout says (sgdisk, in _index
# order, by disko's partition labels), makes the filesystems and mounts them
# under /mnt, the root first.
demo__format_script() {
	local layout=$1 disk
	disk=$(jq -r '.disk | keys | if length == 1 then .[0] else error("one disk expected") end' <<< "$layout")
	jq -r --arg disk "$disk" '
		.disk[$disk] as $d
		| ($d.content.partitions | [.[]] | sort_by(._index)) as $parts
		| "dev=\($d.device)",
		  "sgdisk --zap-all $dev > /dev/null",
		  ($parts[] | "sgdisk -n \(._index):0:\(if .end == "-0" then "0" else .end end)"
			+ " -t \(._index):\(.type) -c \(._index):\(.label)"
			+ " $dev > /dev/null"),
		  ($parts[] | . as $p | $p.attributes[] | "sgdisk -A \($p._index):set:\(.) $dev > /dev/null"),
		  "for i in $(seq 50); do [ -b ${dev}\($parts | length) ] && break; sleep 0.1; done",
		  ($parts[] | select(.content.type? == "filesystem")
			| if .content.format == "vfat" then "mkfs.vfat -F 32 ${dev}\(._index) > /dev/null"
			  elif .content.format == "ext4" then "mkfs.ext4 -q -F ${dev}\(._index)"
			  else error("format \(.content.format) is not in this test") end),
		  ([$parts[] | select(.content.type? == "filesystem")]
			| sort_by(.content.mountpoint | length)[]
			| ("/mnt" + (.content.mountpoint | rtrimstr("/"))) as $at
			| "mkdir -p \($at) && mount -t \(.content.format) -o \(.content.mountOptions | join(",")) ${dev}\(._index) \($at)")
	' <<< "$layout"
}

# demo_install GUEST CONFIG TOPLEVEL TOOL: in the installer GUEST (logged in
# as root, its disk empty): partitions and formats the disk as CONFIG's
# layout says and mounts it at /mnt; streams TOPLEVEL's closure into
# /mnt/nix/store with TOOL's copy; then what nixos-install does: the system
# profile (system -> system-1-link -> TOPLEVEL), /etc/NIXOS, /etc/mtab, root's
# authorized key (the test key, as --extra-files would place it), the
# system's own activate and `switch-to-configuration boot` in a chroot with
# /dev, /proc, /sys and NIXOS_INSTALL_BOOTLOADER=1, twice (a rerun must
# leave the same files); prints what the bootloader step left; unmounts and
# powers the guest off.
demo_install() {
	local guest=$1 config=$2 top=$3 tool=$4 layout
	layout=$(demo_layout "$config")
	demo__format_script "$layout" > "$VM_RUN_DIR/format.sh"
	vm_ssh "$guest" root 'set -eu; sh -eu' < "$VM_RUN_DIR/format.sh"

	NIXOS_ANYWHERE_RS_AGENT=$tool "$tool" copy --to "ssh://root@127.0.0.1:$(vm_port "$guest")" \
		-i "$VM_KEY" --root /mnt "$top" > /dev/null

	vm_ssh "$guest" root 'mkdir -p -m 0700 /mnt/root/.ssh && cat > /mnt/root/.ssh/authorized_keys' \
		< "$VM_KEY.pub"
	vm_ssh "$guest" root sh -eu <<-EOF
		umask 0022
		mkdir -p /mnt/nix/var/nix/profiles /mnt/nix/var/nix/gcroots /mnt/etc /mnt/tmp
		chmod 1777 /mnt/tmp
		ln -sfn $top /mnt/nix/var/nix/profiles/system-1-link
		ln -sfn system-1-link /mnt/nix/var/nix/profiles/system
		ln -sfn /nix/var/nix/profiles /mnt/nix/var/nix/gcroots/profiles
		touch /mnt/etc/NIXOS
		ln -sfn /proc/mounts /mnt/etc/mtab
		mkdir -p /mnt/dev /mnt/proc /mnt/sys
		mount --rbind /dev /mnt/dev
		mount --rbind /sys /mnt/sys
		mount -t proc proc /mnt/proc
		chroot /mnt $top/activate
		NIXOS_INSTALL_BOOTLOADER=1 chroot /mnt /run/current-system/bin/switch-to-configuration boot
		# A rerun, as a second install on the same machine makes, succeeds
		# and leaves the same files.
		sums() { (cd /mnt/boot && find . -type f | sort | xargs md5sum); }
		sums > /tmp/boot.first
		NIXOS_INSTALL_BOOTLOADER=1 chroot /mnt /run/current-system/bin/switch-to-configuration boot
		sums | cmp -s /tmp/boot.first - || { echo "a rerun changed /boot"; exit 1; }
		echo "--- after switch-to-configuration boot:"
		if [ -d /mnt/boot/loader ]; then
			find /mnt/boot -type f | sort
			cat /mnt/boot/loader/loader.conf /mnt/boot/loader/entries/*.conf
		else
			cat /mnt/boot/grub/grub.cfg
		fi
		# Deepest first (busybox's umount has no -R).
		awk '\$2 ~ "^/mnt(/|\$)" {print \$2}' /proc/mounts | sort -r | while read -r m; do
			umount "\$m"
		done
		sync
	EOF
	vm_ssh "$guest" root poweroff || true
	vm_wait_exit "$guest" 60
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
