# qemu harness for the VM tests. Source it from a bash script running with
# `set -euo pipefail`; see vm-tests/README.md for the functions. Every guest
# lives in a directory under $VM_RUN_DIR; an EXIT trap stops every qemu
# started here (by PID) and removes that directory, printing the serial logs
# first when the script fails. A script that sets its own EXIT trap must call
# vm_cleanup from it.

VM_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$VM_TESTS_DIR/lib/images.sh"

VM_RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/vm-tests.XXXXXX")
trap vm_cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
set -E
trap vm__on_error ERR

# The test key, made per run; the harness gives it to each image's login user.
VM_KEY=$VM_RUN_DIR/id_ed25519
ssh-keygen -q -t ed25519 -N '' -C vm-tests -f "$VM_KEY"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# vm_start NAME [OPTION...]: starts a guest in the background and returns;
# vm_wait_ssh waits for it. Options:
#   --image IMAGE    boot IMAGE's kernel and initrd (installer or other),
#                    with the test key for the image's login user
#   --uefi           boot OVMF instead, which boots the first disk
#   --bios           boot SeaBIOS instead, which boots the first disk's MBR
#   --port PORT      forward this host port (127.0.0.1) to the guest's sshd,
#                    e.g. the port of a guest that has stopped, so that a
#                    tool waiting on it finds the next system there
#   --reboot         a guest reboot restarts the guest in place (default: it
#                    ends qemu); a kernel panic still ends qemu, with an
#                    error, through the pvpanic device (the guest kernel must
#                    load pvpanic_pci: the images and the demo system do)
#   --disk SIZE      add an empty virtio disk of SIZE (truncate's units: 2G)
#   --disk-file FILE add FILE as a virtio disk (raw; used in place)
#   --append TEXT    more kernel parameters (with --image), e.g. lockdown=integrity
#   --mem MIB        memory, default 1536
#   --smp N          CPUs, default 1
# Disks appear in the guest in the order given: /dev/vda, /dev/vdb, ...
vm_start() {
	local name=$1 image='' firmware='' mem=1536 smp=1 disks=() disk fixed_port='' reboot=false append=
	shift
	local dir=$VM_RUN_DIR/vm-$name
	[[ ! -e $dir ]] || fail "vm_start: a guest named $name exists already"
	mkdir -p "$dir"
	while (($#)); do
		disk=$dir/disk${#disks[@]}.raw
		case $1 in
		--image) image=$2 && shift ;;
		--uefi | --bios)
			[[ -z $firmware ]] || fail "vm_start: give one of --uefi and --bios"
			firmware=${1#--}
			;;
		--port) fixed_port=$2 && shift ;;
		--reboot) reboot=true ;;
		--disk)
			truncate -s "$2" "$disk"
			disks+=("$disk") && shift
			;;
		--disk-file)
			[[ -f $2 ]] || fail "vm_start: no disk file $2"
			ln -s "$(realpath "$2")" "$disk"
			disks+=("$disk") && shift
			;;
		--mem) mem=$2 && shift ;;
		--append) append=" $2" && shift ;;
		--smp) smp=$2 && shift ;;
		*) fail "vm_start: unknown option $1" ;;
		esac
		shift
	done
	[[ -n $image || -n $firmware ]] || fail "vm_start: give --image, --uefi or --bios"
	[[ -z $image || -z $firmware ]] || fail "vm_start: --image and --$firmware exclude each other"
	[[ -z $fixed_port || $fixed_port =~ ^[0-9]+$ ]] || fail "vm_start: --port wants a number, not $fixed_port"

	vm_accel
	local args=(-nodefaults -machine q35)
	if [[ $VM_ACCEL == tcg ]]; then
		# TCG keeps translated code for 1 GiB by default. A kernel started by
		# kexec then writes its initramfs over pages that still hold the old
		# system's translations, and each such write takes qemu's slow path:
		# unpacking took 8-15 s instead of 1.5 s. A 64 MiB cache is flushed
		# often enough, and costs nothing measurable elsewhere.
		args+=(-accel tcg,tb-size=64 -cpu max)
	else
		args+=(-accel kvm -cpu host)
	fi
	args+=(
		-m "$mem" -smp "$smp" -display none
		-serial "file:$dir/serial.log"
		-device virtio-rng-pci
		-device virtio-net-pci,netdev=net0
	)
	if [[ $reboot == true ]]; then
		args+=(-action panic=exit-failure -device pvpanic-pci)
	else
		args+=(-no-reboot)
	fi
	for disk in "${disks[@]}"; do
		args+=(-drive "file=$disk,format=raw,if=virtio,cache=unsafe")
	done
	if [[ $firmware == bios ]]; then
		# SeaBIOS is qemu's default firmware: with no -kernel it boots the
		# first disk.
		:
	elif [[ $firmware == uefi ]]; then
		cp /usr/share/OVMF/OVMF_VARS_4M.fd "$dir/ovmf-vars.fd"
		args+=(
			-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
			-drive "if=pflash,format=raw,file=$dir/ovmf-vars.fd"
		)
	else
		images_ensure
		local img=$IMAGES_DIR/$image
		[[ -f $img/initrd ]] || fail "vm_start: no image $image"
		vm_initrd_with_key "$image" > "$dir/initrd"
		args+=(-kernel "$img/bzImage" -initrd "$dir/initrd" -append "$GUEST_CMDLINE$append")
	fi

	# restrict=on: the guest reaches nothing outside qemu; only the forwarded
	# port leads in. Another process may take the port first: then retry.
	local try port
	for try in 1 2 3 4 5; do
		port=${fixed_port:-$((20000 + RANDOM % 40000))}
		if qemu-system-x86_64 "${args[@]}" \
			-netdev "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:$port-:22" \
			-daemonize -pidfile "$dir/pid" 2> "$dir/qemu.log"; then
			echo "$port" > "$dir/port"
			: > "$dir/known_hosts"
			return 0
		fi
		grep -q 'host forwarding' "$dir/qemu.log" && [[ -z $fixed_port ]] || break
	done
	cat "$dir/qemu.log" >&2
	fail "vm_start: qemu did not start"
}

# vm_boot_disk NAME uefi|bios FILE [PORT] [OPTION...]: starts a guest that
# boots the disk FILE (used in place) through OVMF or SeaBIOS, on the
# forwarded PORT if given (e.g. "$(vm_port inst)" to take the port of an
# installer that has powered off); further options go to vm_start.
vm_boot_disk() {
	local name=$1 firmware=$2 file=$3 port=${4:-}
	shift 3
	if (($#)); then shift; fi
	case $firmware in
	uefi | bios) ;;
	*) fail "vm_boot_disk: firmware is uefi or bios, not $firmware" ;;
	esac
	vm_start "$name" "--$firmware" --disk-file "$file" ${port:+--port "$port"} "$@"
}

# vm_image_disk FILE SIZE IMAGE: makes FILE a GPT disk of SIZE whose first
# partition, a 128 MiB ESP, boots IMAGE (installer or other) under OVMF
# (vm_boot_disk NAME uefi FILE): systemd-boot at the removable-media path,
# the image's kernel and its initrd with the test key, an entry with
# GUEST_CMDLINE. The image runs from RAM, so the rest of the disk is free and
# nothing on it is busy: a system booted from it may repartition the whole
# disk (issue 13's "other Linux" that is installed over in place). The ESP is
# built as a file with mtools (this host cannot mount vfat).
vm_image_disk() {
	local file=$1 size=$2 image=$3 start sectors stage
	images_ensure
	stage=$(mktemp -d "$VM_RUN_DIR/esp.XXXXXX")
	truncate -s "$size" "$file"
	sgdisk -n 1:1M:+128M -t 1:ef00 -c 1:ESP "$file" > /dev/null
	read -r start sectors < <(partx -g -o START,SECTORS -n 1 "$file")
	mkfs.vfat -F 32 -n ESP -C "$stage/esp" $((sectors / 2)) > /dev/null
	mmd -i "$stage/esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
	mcopy -i "$stage/esp" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
	mcopy -i "$stage/esp" "$IMAGES_DIR/$image/bzImage" ::/vmlinuz
	vm_initrd_with_key "$image" > "$stage/initrd"
	mcopy -i "$stage/esp" "$stage/initrd" ::/initrd
	printf 'timeout 0\ndefault %s.conf\n' "$image" > "$stage/loader.conf"
	mcopy -i "$stage/esp" "$stage/loader.conf" ::/loader/loader.conf
	printf 'title %s\nlinux /vmlinuz\ninitrd /initrd\noptions %s\n' "$image" "$GUEST_CMDLINE" \
		> "$stage/entry.conf"
	mcopy -i "$stage/esp" "$stage/entry.conf" "::/loader/entries/$image.conf"
	dd if="$stage/esp" of="$file" bs=512 seek="$start" conv=notrunc status=none
	rm -rf "$stage"
}

# vm_initrd_with_key IMAGE: prints IMAGE's initrd with a gzipped cpio
# appended that holds the test key as the login user's authorized_keys (the
# kernel unpacks every archive of a concatenated initrd; a compressed one
# needs no alignment). vm_start uses it; it is also what to put on a disk
# that boots the image.
vm_initrd_with_key() {
	images_ensure
	local img=$IMAGES_DIR/$1 user uid gid home stage
	read -r user uid gid home < "$img/login"
	stage=$(mktemp -d "$VM_RUN_DIR/key.XXXXXX")
	mkdir -p "$stage$home/.ssh"
	cp "$VM_KEY.pub" "$stage$home/.ssh/authorized_keys"
	chown -R "$uid:$gid" "$stage$home/.ssh"
	chmod 0700 "$stage$home/.ssh"
	cat "$img/initrd"
	(cd "$stage" && printf '%s\n' "${home#/}/.ssh" "${home#/}/.ssh/authorized_keys" |
		cpio -o -H newc --quiet | gzip -1)
	rm -rf "$stage"
}

# Sets and exports VM_ACCEL unless it is set: kvm if a probe guest boots with
# it, else tcg (/dev/kvm may exist and still not boot a kernel).
vm_accel() {
	if [[ -z ${VM_ACCEL:-} ]]; then
		VM_ACCEL=tcg
		if [[ -r /dev/kvm && -w /dev/kvm ]]; then
			images_ensure
			local log=$VM_RUN_DIR/kvm-probe.log
			# qemu may die of a signal; the braces keep bash's report quiet.
			{ timeout 15 qemu-system-x86_64 -nodefaults -machine q35 -accel kvm \
				-cpu host -m 256 -display none -no-reboot -serial "file:$log" \
				-kernel "$IMAGES_DIR/installer/bzImage" \
				-initrd "$IMAGES_DIR/probe/initrd" -append "$GUEST_CMDLINE" \
				> /dev/null 2>&1; } 2> /dev/null || true
			grep -q KVM-PROBE-OK "$log" 2> /dev/null && VM_ACCEL=kvm
		fi
		export VM_ACCEL
	fi
}

vm__dir() {
	[[ -d $VM_RUN_DIR/vm-$1 ]] || fail "no guest named $1"
	echo "$VM_RUN_DIR/vm-$1"
}

# vm_port NAME: the host port (on 127.0.0.1) forwarded to the guest's port 22.
vm_port() { cat "$(vm__dir "$1")/port"; }

# vm_serial NAME: the serial log file.
vm_serial() { echo "$(vm__dir "$1")/serial.log"; }

# vm_disk NAME INDEX: the file behind the INDEX-th disk (0 is /dev/vda).
vm_disk() {
	local f
	f=$(vm__dir "$1")/disk$2.raw
	[[ -e $f ]] || fail "guest $1 has no disk $2"
	realpath "$f"
}

# vm_running NAME: whether the guest's qemu is still running.
vm_running() {
	local pid
	pid=$(cat "$(vm__dir "$1")/pid" 2> /dev/null) || return 1
	# The PID is ours only while it is a qemu of this guest.
	grep -qF "$VM_RUN_DIR/vm-$1/" "/proc/$pid/cmdline" 2> /dev/null
}

# Sets the caller's array `opts` to the SSH options for guest $1: the test
# key only, no agent, and host keys pinned per guest: the first connection
# records the guest's host key and later ones fail if it changes
# (vm_forget_host_key allows that once).
vm__ssh_opts() {
	local dir
	dir=$(vm__dir "$1")
	opts=(-i "$VM_KEY" -o IdentitiesOnly=yes -o IdentityAgent=none
		-o BatchMode=yes -o StrictHostKeyChecking=accept-new
		-o UserKnownHostsFile="$dir/known_hosts" -o GlobalKnownHostsFile=/dev/null
		-o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3
		-o LogLevel=ERROR)
}

# vm_ssh NAME USER [COMMAND...]: runs COMMAND (a shell command line, words
# joined by spaces as ssh does) as USER in the guest; stdin is passed on.
vm_ssh() {
	local name=$1 user=$2 opts
	shift 2
	vm__ssh_opts "$name"
	ssh "${opts[@]}" -p "$(vm_port "$name")" "$user@127.0.0.1" -- "$@"
}

# vm_copy_to NAME USER LOCAL REMOTE: copies a file into the guest (scp, which
# speaks SFTP to the guest's sftp-server).
vm_copy_to() {
	local name=$1 user=$2 opts
	vm__ssh_opts "$name"
	scp -q "${opts[@]}" -P "$(vm_port "$name")" "$3" "$user@127.0.0.1:$4"
}

# vm_host_key NAME: the guest's ed25519 host key as the host sees it.
vm_host_key() {
	local key
	key=$(ssh-keyscan -t ed25519 -T 10 -p "$(vm_port "$1")" 127.0.0.1 2> /dev/null |
		awk '{print $2, $3}')
	[[ -n $key ]] || fail "guest $1 showed no ed25519 host key"
	echo "$key"
}

# vm_forget_host_key NAME: accept a new host key on the next connection.
vm_forget_host_key() { : > "$(vm__dir "$1")/known_hosts"; }

# vm_wait_ssh NAME USER [SECONDS]: waits until USER can log in (default: up
# to 180 s); fails at once if qemu has exited or the host key changed.
vm_wait_ssh() {
	local name=$1 user=$2 deadline=$((SECONDS + ${3:-180})) err='' tries=0
	# Every sixth round (about 15 s) logs in even without a banner, in case a
	# slow guest takes longer than the probe allows.
	until { vm__banner "$name" || ((++tries % 6 == 0)); } &&
		err=$(vm_ssh "$name" "$user" true 2>&1 < /dev/null); do
		[[ $err != *"Host key verification failed"* ]] ||
			fail "guest $name: its host key changed (vm_forget_host_key allows that)"
		vm_running "$name" || fail "guest $name stopped while waiting for SSH"
		((SECONDS < deadline)) || fail "guest $name: no SSH login for $user within ${3:-180} s"
		sleep 0.5
	done
}

# Whether sshd's banner comes within 2 s. qemu accepts a forwarded connection
# before the guest listens, and a connection made too early waits for qemu's
# SYN retries to the guest, seconds apart: a short probe is faster.
vm__banner() {
	# shellcheck disable=SC2016 # expanded by the inner bash
	[[ $(timeout 2 bash -c 'exec 3<> "/dev/tcp/127.0.0.1/$1" && head -c 4 <&3' _ \
		"$(vm_port "$1")" 2> /dev/null) == SSH- ]]
}

# vm_wait_ssh_gone NAME [SECONDS]: waits until sshd stops answering, as
# when the guest reboots or kexecs (default: up to 60 s).
vm_wait_ssh_gone() {
	local name=$1 deadline=$((SECONDS + ${2:-60}))
	while vm__banner "$name"; do
		((SECONDS < deadline)) || fail "guest $name: SSH still up after ${2:-60} s"
		sleep 0.5
	done
}

# vm_wait_exit NAME [SECONDS]: waits until qemu exits by itself, as it does
# when the guest powers off (default: up to 60 s).
vm_wait_exit() {
	local name=$1 deadline=$((SECONDS + ${2:-60}))
	while vm_running "$name"; do
		((SECONDS < deadline)) || fail "guest $name still running after ${2:-60} s"
		sleep 1
	done
}

# vm_stop NAME: stops qemu (TERM, then KILL after 10 s). The disks stay
# until the script exits.
vm_stop() {
	local name=$1 pid i
	vm_running "$name" || return 0
	pid=$(cat "$(vm__dir "$name")/pid")
	kill "$pid" 2> /dev/null || true
	for i in {1..20}; do
		vm_running "$name" || return 0
		sleep 0.5
	done
	kill -KILL "$pid" 2> /dev/null || true
}

# vm_loop_attach FILE: attaches a disk file to a loop device, with partition
# nodes made by partx (losetup -P makes none on this host), and prints the
# device (/dev/loopN; partitions /dev/loopNp1...). Detached on exit.
vm_loop_attach() {
	local dev
	dev=$(losetup --find --show "$1")
	echo "$dev" >> "$VM_RUN_DIR/loops"
	partx -a "$dev" 2> /dev/null || true
	echo "$dev"
}

# Names the failed command and where it was called from.
vm__on_error() {
	local rc=$? i where=''
	for ((i = 0; i < ${#BASH_LINENO[@]} - 1; i++)); do
		where+=" ${BASH_SOURCE[i + 1]##*/}:${BASH_LINENO[i]}"
	done
	echo "vm-tests: exit status $rc from: $BASH_COMMAND (at$where)" >&2
}

vm_cleanup() {
	local rc=$? dir name dev
	# Clean up as much as possible, whatever fails or signals.
	trap - ERR
	trap '' HUP INT TERM
	set +e
	for dir in "$VM_RUN_DIR"/vm-*; do
		[[ -d $dir ]] || continue
		name=${dir##*/vm-}
		if ((rc != 0)); then
			echo "---- guest $name: serial log (last 80 lines) ----" >&2
			tail -n 80 "$dir/serial.log" >&2 2> /dev/null || true
			[[ -s $dir/qemu.log ]] && cat "$dir/qemu.log" >&2
		fi
		vm_stop "$name"
	done
	if [[ -f $VM_RUN_DIR/loops ]]; then
		while read -r dev; do
			partx -d "$dev" 2> /dev/null || true
			losetup -d "$dev" || true
		done < "$VM_RUN_DIR/loops"
	fi
	rm -rf "$VM_RUN_DIR"
	exit "$rc"
}
