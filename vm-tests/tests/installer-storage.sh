#!/bin/bash
# In the installer, on four virtio disks: a GPT with a vfat ESP and a LUKS2
# partition holding ext4; an md RAID1 holding btrfs; an LVM volume group with
# xfs and vfat volumes. Everything is mounted and written, taken down, brought
# up again and read back; then the host reads the disks the guest left.
set -euo pipefail
source "$(dirname "$0")/../lib/harness.sh"

vm_start inst --image installer --disk 256M --disk 256M --disk 256M --disk 512M
vm_wait_ssh inst root

vm_ssh inst root bash -s <<'EOF'
set -euxo pipefail
sgdisk --zap-all -n 1:1M:+64M -t 1:ef00 -c 1:ESP -n 2:0:0 -t 2:8309 -c 2:crypted /dev/vda
mkfs.vfat -n ESP /dev/vda1
printf secret > /root/luks-key
# pbkdf2 with few iterations: LUKS2's default argon2 takes seconds under TCG.
cryptsetup luksFormat --type luks2 --batch-mode --pbkdf pbkdf2 \
	--pbkdf-force-iterations 1000 --key-file /root/luks-key /dev/vda2
cryptsetup open --key-file /root/luks-key /dev/vda2 crypted
mkfs.ext4 -q /dev/mapper/crypted

mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 /dev/vdb /dev/vdc
mkfs.btrfs -q /dev/md0

pvcreate /dev/vdd
vgcreate vg0 /dev/vdd
lvcreate -L 320M -n xfs vg0
lvcreate -l 100%FREE -n fat vg0
mkfs.xfs -q /dev/vg0/xfs
mkfs.vfat /dev/vg0/fat
EOF

# Mounts everything, checks each mount's source and type, writes a file to
# each ("write") or checks that the file is there.
vm_ssh inst root 'cat > /root/mount-all' <<'EOF'
set -euxo pipefail
while read -r dev dir type; do
	mkdir -p "$dir"
	mount -t "$type" "$dev" "$dir"
	[ "$(findmnt -n -r -o SOURCE,FSTYPE "$dir")" = "$dev $type" ]
	if [ "${1:-}" = write ]; then
		echo "hello from $dir" > "$dir/hello"
	fi
	[ "$(cat "$dir/hello")" = "hello from $dir" ]
done <<'MOUNTS'
/dev/vda1 /mnt/esp vfat
/dev/mapper/crypted /mnt/crypted ext4
/dev/md0 /mnt/raid btrfs
/dev/mapper/vg0-xfs /mnt/lvm-xfs xfs
/dev/mapper/vg0-fat /mnt/lvm-fat vfat
MOUNTS
EOF

vm_ssh inst root bash -s <<'EOF'
set -euxo pipefail
bash /root/mount-all write
umount /mnt/*
cryptsetup close crypted
mdadm --stop /dev/md0
vgchange -an vg0

cryptsetup open --key-file /root/luks-key /dev/vda2 crypted
mdadm --assemble /dev/md0 /dev/vdb /dev/vdc
vgchange -ay vg0
bash /root/mount-all
detail=$(mdadm --detail /dev/md0)
[[ $detail == *"Raid Level : raid1"* && $detail == *"Active Devices : 2"* ]]
EOF

vm_ssh inst root poweroff
vm_wait_exit inst

# The host reads what the guest left: the partition table, the ESP's file
# (through mtools: this host cannot mount vfat) and the signatures.
[[ $(sgdisk -p "$(vm_disk inst 0)") == *"EF00  ESP"* ]] || fail "no ESP in the partition table"
loop=$(vm_loop_attach "$(vm_disk inst 0)")
[[ $(blkid -p -s TYPE -o value "${loop}p1") == vfat ]] || fail "partition 1 is not vfat"
[[ $(blkid -p -s TYPE -o value "${loop}p2") == crypto_LUKS ]] || fail "partition 2 is not LUKS"
[[ $(mtype -i "${loop}p1" ::/hello 2> /dev/null) == "hello from /mnt/esp" ]] || fail "the ESP lacks the file"
[[ $(blkid -p -s TYPE -o value "$(vm_disk inst 1)") == linux_raid_member ]] ||
	fail "disk 1 is not an md member"
[[ $(blkid -p -s TYPE -o value "$(vm_disk inst 3)") == LVM2_member ]] ||
	fail "disk 3 is not an LVM physical volume"
