# Builds the guest images from Debian packages on this host (vm-tests/setup
# installs IMAGE_PACKAGES) into the git-ignored cache. Sourced by harness.sh
# and setup; `images_ensure` is the entry point.
#
# $IMAGES_DIR/installer/ and other/   bzImage, initrd (uncompressed newc
#                                     cpio) and login ("USER UID GID HOME",
#                                     whom the harness gives the test key)
# $IMAGES_DIR/kexec-installer.tar.gz  the installer in nixos-images' layout
# $IMAGES_DIR/probe/initrd            prints a marker and powers off (KVM probe)

VM_TESTS_DIR=${VM_TESTS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VM_CACHE=${VM_CACHE:-$VM_TESTS_DIR/.cache}

# Kernel command line of the guests: the serial port is the console, and a
# panic powers the guest off at once (qemu runs with -no-reboot).
GUEST_CMDLINE="console=ttyS0,115200 loglevel=4 panic=-1"

# Kernel modules loaded at boot; what they depend on comes along. depmod
# makes every module in an image loadable on demand too: mount -t vfat has
# the kernel run modprobe for nls_cp437, mount -t efivarfs for efivarfs
# (which fails to load without UEFI, hence not at boot).
# pvpanic_pci: through it a panic ends a guest started with vm_start --reboot.
BASE_MODULES=(virtio_pci virtio_blk virtio_net virtio_rng pvpanic_pci)
INSTALLER_MODULES=(
	ext4 xfs btrfs vfat nls_cp437 nls_ascii nls_utf8 nls_iso8859_1
	loop dm_mod dm_crypt xts aesni_intel algif_skcipher algif_hash
	md_mod raid0 raid1 raid10 raid456 dm_raid
)
INSTALLER_ON_DEMAND_MODULES=(efivarfs)

# Binaries of every image (all of these packages' bin and sbin files).
BASE_PACKAGES=(bash dash coreutils findutils grep sed util-linux kmod iproute2
	openssh-server openssh-client tar gzip xz-utils zstd cpio)
INSTALLER_PACKAGES=(kexec-tools jq e2fsprogs xfsprogs btrfs-progs dosfstools
	cryptsetup-bin lvm2 mdadm gdisk fdisk parted)
OTHER_PACKAGES=(sudo opendoas wget)
# The password of the other Linux's users alice (SSH and sudo) and doug (doas):
# test data, like the test key.
OTHER_PASSWORD=other-linux-password
# strace: the install tests trace every execve in the installer (no secret in
# any argument list).
INSTALLER_PACKAGES+=(strace)
# Everything the images are made of; their versions are part of the cache key.
IMAGE_PACKAGES=("${BASE_PACKAGES[@]}" "${INSTALLER_PACKAGES[@]}" "${OTHER_PACKAGES[@]}"
	linux-image-amd64 busybox-static base-files libpam-modules)
# Left out: they alone would add 35 MB of ICU and Berkeley DB libraries.
EXCLUDED_BINARIES=(xfs_scrub arpd)

# Sets IMAGES_DIR to the images of the current inputs, building them first
# unless the cache has them. Older builds are removed.
images_ensure() {
	local key
	key=$(images__key)
	IMAGES_DIR=$VM_CACHE/images/$key
	[[ -f $IMAGES_DIR/done ]] && return 0
	mkdir -p "$VM_CACHE/images"
	(
		# Concurrent runs wait for one build.
		flock 9
		[[ -f $IMAGES_DIR/done ]] && exit 0
		echo "vm-tests: building images $key" >&2
		rm -rf "$VM_CACHE/images/"*
		mkdir -p "$IMAGES_DIR"
		# Other work on this machine comes first.
		renice -n 10 -p "$BASHPID" > /dev/null
		images__build "$IMAGES_DIR"
		touch "$IMAGES_DIR/done"
	) 9> "$VM_CACHE/images.lock"
}

# Hash of the build scripts, the guest files and the versions of the packages
# the images are made of and of the packages those depend on directly.
images__key() {
	local pkgs deps
	pkgs=("${IMAGE_PACKAGES[@]}" "$(images__kernel_package)")
	deps=$(dpkg-query -W -f='${Depends},${Pre-Depends},' "${pkgs[@]}" |
		sed 's/([^)]*)//g; s/|/,/g; s/:any//g' | tr ', ' '\n\n' | sort -u)
	{
		cat "$VM_TESTS_DIR/lib/images.sh" "$VM_TESTS_DIR"/image/*
		# shellcheck disable=SC2086 # one package name per word
		dpkg-query -W "${pkgs[@]}" $deps 2> /dev/null || true
	} | sha256sum | cut -c1-16
}

# linux-image-amd64 depends on the package of the current kernel.
images__kernel_package() {
	dpkg-query -W -f='${Depends}' linux-image-amd64 | sed 's/ .*//'
}

images__build() {
	local out=$1 kver work
	kver=$(images__kernel_package)
	kver=${kver#linux-image-}
	work=$out/scratch
	mkdir -p "$work"

	images__installer_root "$work/installer" "$kver"
	images__pack "$work/installer" "$out/installer" "$kver" root 0 0 /root
	images__kexec_tarball "$out"

	images__other_root "$work/other" "$kver"
	images__pack "$work/other" "$out/other" "$kver" debian 1000 1000 /home/debian

	mkdir -p "$work/probe/bin" "$work/probe/dev" "$out/probe"
	cp /bin/busybox "$work/probe/bin/"
	ln -s busybox "$work/probe/bin/sh"
	mknod -m 600 "$work/probe/dev/console" c 5 1
	printf '#!/bin/sh\necho KVM-PROBE-OK\nbusybox poweroff -f\n' > "$work/probe/init"
	chmod +x "$work/probe/init"
	images__cpio "$work/probe" > "$out/probe/initrd"

	rm -rf "$work"
}

# images__pack ROOT OUT KVER USER UID GID HOME: kernel, initrd and login file.
images__pack() {
	local root=$1 out=$2 kver=$3
	mkdir -p "$out"
	cp "/boot/vmlinuz-$kver" "$out/bzImage"
	images__cpio "$root" > "$out/initrd"
	echo "${@:4}" > "$out/login"
}

images__cpio() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort |
		cpio -o -H newc --quiet --reproducible)
}

# What both images have: a merged-/usr skeleton, the base packages, the
# kernel modules, sshd, DHCP, /init, and busybox for whatever is still missing.
images__base_root() {
	local root=$1 kver=$2 hostname=$3
	shift 3
	local d
	mkdir -p "$root"
	for d in bin sbin lib lib64; do
		mkdir -p "$root/usr/$d"
		ln -s "usr/$d" "$root/$d"
	done
	mkdir -p "$root"/{dev,proc,sys,run,etc/ssh,root,tmp,var/log,mnt}
	chmod 0700 "$root/root"
	chmod 1777 "$root/tmp"
	ln -s ../run "$root/var/run"
	mknod -m 600 "$root/dev/console" c 5 1

	images__add_packages "$root" "${BASE_PACKAGES[@]}"
	images__add "$root" /usr/lib/openssh/sftp-server
	# glibc loads it for pthread_cancel.
	images__add "$root" /lib/x86_64-linux-gnu/libgcc_s.so.1
	images__add_modules "$root" "$kver" "$@"
	printf '%s\n' "$@" > "$root/etc/modules"

	local img=$VM_TESTS_DIR/image
	install -m 0755 "$img/init" "$root/init"
	install -m 0755 "$img/udhcpc.script" "$root/etc/udhcpc.script"
	install -m 0644 "$img/inittab" "$root/etc/inittab"
	install -m 0644 "$img/sshd_config" "$root/etc/ssh/sshd_config"
	echo "$hostname" > "$root/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 %s\n' "$hostname" > "$root/etc/hosts"
	printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files\n' \
		> "$root/etc/nsswitch.conf"
	: > "$root/etc/fstab"
	images__user "$root" root 0 0 /root
	images__user "$root" sshd 100 65534 /run/sshd /usr/sbin/nologin
	echo "nogroup:x:65534:" >> "$root/etc/group"

	# Applets only where Debian's own tool is not there.
	local applet
	cp /bin/busybox "$root/usr/bin/busybox"
	for applet in $(busybox --list); do
		[[ -e $root/usr/bin/$applet || -e $root/usr/sbin/$applet ]] ||
			ln -s busybox "$root/usr/bin/$applet"
	done
}

images__installer_root() {
	local root=$1 kver=$2
	images__base_root "$root" "$kver" nixos-installer \
		"${BASE_MODULES[@]}" "${INSTALLER_MODULES[@]}"
	images__add_modules "$root" "$kver" "${INSTALLER_ON_DEMAND_MODULES[@]}"
	images__add_packages "$root" "${INSTALLER_PACKAGES[@]}"
	local img=$VM_TESTS_DIR/image
	install -m 0755 "$img/restore-remote-access" "$root/sbin/restore-remote-access"
	install -m 0755 "$img/restore-network" "$root/sbin/restore-network"
	# No udev in the guests: LVM must create its device nodes itself.
	mkdir -p "$root/etc/lvm"
	printf '%s\n' 'activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }' \
		'devices { obtain_device_list_from_udev = 0 }' > "$root/etc/lvm/lvm.conf"
	# As nixos-images' installer the image has a nix.conf, but the guests reach
	# no network: no binary cache (Nix's default would be cache.nixos.org), so
	# an install substitutes nothing and streams everything.
	mkdir -p "$root/etc/nix"
	printf '%s\n' 'substituters =' > "$root/etc/nix/nix.conf"
	cat > "$root/etc/os-release" <<-'EOF'
		NAME=NixOS
		ID=nixos
		VARIANT_ID=installer
		VARIANT="test installer (nixos-anywhere-rs vm-tests, built from Debian packages)"
		PRETTY_NAME="NixOS installer (nixos-anywhere-rs test image)"
	EOF
}

# The "other Linux": Debian's os-release, host keys and a machine-id made
# once, like an installed cloud VM, and users who become root each their own
# way (issue 14): debian (the harness's login) by password-less sudo, alice
# (who logs in by password only) by sudo with her password, dora by doas with
# `nopass`, doug by doas with a password (which doas reads only from a
# terminal). Their password is $OTHER_PASSWORD; /srv/USER is a directory only
# root may write to.
images__other_root() {
	local root=$1 kver=$2 user hash
	images__base_root "$root" "$kver" debian "${BASE_MODULES[@]}"
	# Debian's wget, not busybox's (which, static, crashes in name lookups).
	rm -f "$root/usr/bin/wget"
	images__add_packages "$root" "${OTHER_PACKAGES[@]}"
	images__add "$root" /usr/libexec/sudo/sudoers.so \
		/usr/lib/x86_64-linux-gnu/security/pam_permit.so \
		/usr/lib/x86_64-linux-gnu/security/pam_deny.so \
		/usr/lib/x86_64-linux-gnu/security/pam_unix.so
	images__add "$root" /usr/lib/os-release
	ln -s ../usr/lib/os-release "$root/etc/os-release"

	images__user "$root" debian 1000 1000 /home/debian
	images__user "$root" alice 1001 1001 /home/alice
	images__user "$root" dora 1002 1002 /home/dora
	images__user "$root" doug 1003 1003 /home/doug
	hash=$(printf %s "$OTHER_PASSWORD" | openssl passwd -6 -stdin)
	sed -i -E "s#^(alice|doug):\*:#\1:$hash:#" "$root/etc/shadow"
	echo "sudo:x:27:debian,alice" >> "$root/etc/group"
	mkdir -p "$root/etc/pam.d"
	# sudo and doas ask PAM; only a user's own password (pam_unix) authenticates.
	printf '%s\n' 'auth sufficient pam_unix.so' 'auth required pam_deny.so' \
		'account required pam_permit.so' 'session required pam_permit.so' |
		tee "$root/etc/pam.d/sudo" > "$root/etc/pam.d/doas"
	printf '%s\n' 'Defaults env_reset' 'root ALL=(ALL:ALL) ALL' \
		'debian ALL=(ALL:ALL) NOPASSWD: ALL' 'alice ALL=(ALL:ALL) ALL' > "$root/etc/sudoers"
	chmod 0440 "$root/etc/sudoers"
	printf '%s\n' 'permit nopass dora as root' 'permit doug as root' > "$root/etc/doas.conf"
	chmod 0400 "$root/etc/doas.conf"
	# alice logs in with her password only.
	printf '%s\n' 'Match User alice' '	PasswordAuthentication yes' >> "$root/etc/ssh/sshd_config"
	for user in alice dora doug; do
		mkdir -p "$root/srv/$user"
	done

	ssh-keygen -q -A -f "$root" > /dev/null
	od -An -N16 -tx1 /dev/urandom | tr -d ' \n' > "$root/etc/machine-id"
	echo >> "$root/etc/machine-id"
}

# images__user ROOT NAME UID GID HOME [SHELL]: passwd, group and shadow lines
# (shadow's "*": no password, yet not locked, so key logins work) and a home.
images__user() {
	local root=$1 name=$2 uid=$3 gid=$4 home=$5 shell=${6:-/bin/bash}
	echo "$name:x:$uid:$gid::$home:$shell" >> "$root/etc/passwd"
	echo "$name:*:19000:0:99999:7:::" >> "$root/etc/shadow"
	[[ $gid == "$uid" ]] && echo "$name:x:$gid:" >> "$root/etc/group"
	if [[ $home != /run/* ]]; then
		mkdir -p "$root$home"
		chown "$uid:$gid" "$root$home"
	fi
	chmod 0640 "$root/etc/shadow"
}

# images__add_packages ROOT PACKAGE...: every bin and sbin file of the packages.
images__add_packages() {
	local root=$1
	shift
	# shellcheck disable=SC2046 # one path per word
	images__add "$root" $(dpkg-query -L "$@" | grep -E '^(/usr)?/s?bin/.' |
		grep -vE "/($(IFS='|' && echo "${EXCLUDED_BINARIES[*]}"))\$" | sort -u)
}

# images__add ROOT PATH...: copies each path to the same place in ROOT,
# symlinks as symlinks followed to their targets, ELF files with the
# libraries ldd lists (the dynamic loader included).
images__add() {
	local root=$1 path target
	shift
	for path; do
		[[ -e $root$path || -L $root$path ]] && continue
		mkdir -p "$root$(dirname "$path")"
		if [[ -L $path ]]; then
			cp -P "$path" "$root$path"
			target=$(readlink "$path")
			[[ $target == /* ]] || target=$(dirname "$path")/$target
			images__add "$root" "$(realpath -ms "$target")"
		elif [[ -f $path ]]; then
			cp -p "$path" "$root$path"
			# shellcheck disable=SC2046 # one path per word
			images__add "$root" $(images__libs "$path")
		fi
	done
}

# The libraries ldd lists for an ELF file, the dynamic loader included; none
# for a script.
images__libs() {
	ldd "$1" 2> /dev/null |
		awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' || true
}

# images__add_modules ROOT KVER MODULE...: the modules and what they depend on
# (modprobe --show-depends), then depmod for all modules in ROOT.
images__add_modules() {
	local root=$1 kver=$2 ko
	shift 2
	for ko in $(modprobe -S "$kver" --show-depends -a "$@" | awk '$1 == "insmod" {print $2}'); do
		mkdir -p "$root$(dirname "$ko")"
		cp "$ko" "$root$ko"
	done
	cp /lib/modules/"$kver"/modules.{order,builtin,builtin.modinfo} \
		"$root/lib/modules/$kver/"
	depmod -b "$root" "$kver"
}

# The tarball in nixos-images' layout: kexec/{bzImage,initrd,run,kexec,ip}.
# kexec and ip are Debian's, run through the dynamic loader shipped beside
# them (kexec/lib), so that they work on any x86_64 Linux as nixos-images'
# static builds do.
images__kexec_tarball() {
	local out=$1 stage=$1/scratch/tarball
	local dir=$stage/kexec tool
	mkdir -p "$dir/lib" "$dir/libexec"
	cp "$out/installer/bzImage" "$out/installer/initrd" "$dir/"
	install -m 0755 "$VM_TESTS_DIR/image/kexec-run" "$dir/run"
	for tool in /usr/sbin/kexec /usr/bin/ip; do
		cp "$(realpath "$tool")" "$dir/libexec/${tool##*/}"
		install -m 0755 "$VM_TESTS_DIR/image/bundled-tool" "$dir/${tool##*/}"
		# shellcheck disable=SC2046 # one path per word
		cp -L $(images__libs "$tool") "$dir/lib/"
	done
	tar -C "$stage" -czf "$out/kexec-installer.tar.gz" kexec
	rm -rf "$stage"
}
