//! disko's `disko.devices` as typed data: every node of the layout with disko's defaults filled
//! in and the names and device paths disko derives already computed (see `disko-semantics.md`),
//! so planning never re-derives a name and an unknown field never slips through.

mod content;
pub mod node;
mod parse;

use serde::Serialize;

pub use node::LayoutError;
pub use parse::parse;

/// The whole layout: the six kinds of top-level device, each in attribute-name order.
#[derive(Debug, Clone, Serialize)]
pub struct Layout {
    pub bcachefs_filesystems: Vec<BcachefsFs>,
    pub disk: Vec<Disk>,
    pub lvm_vg: Vec<LvmVg>,
    pub mdadm: Vec<Mdadm>,
    pub nodev: Vec<Nodev>,
    pub zpool: Vec<Zpool>,
}

/// A node's shell hooks (disko runs each in a subshell around the node's own commands).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Hooks {
    pub pre_create: String,
    pub post_create: String,
    pub pre_mount: String,
    pub post_mount: String,
    pub pre_unmount: String,
    pub post_unmount: String,
}

/// A path in the layout where a device or name is defined, kept for error messages.
pub type NodePath = String;

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub path: NodePath,
    /// The attribute name.
    pub attr: String,
    /// `name`, default the attribute name with `/` replaced by `_`.
    pub name: String,
    pub device: String,
    pub destroy: bool,
    pub image_name: String,
    pub image_size: String,
    pub content: Option<Content>,
    pub hooks: Hooks,
}

/// Where a content node's device comes from, beside the path disko names it by: for a partition,
/// the whole disk and the number, so execution can format the kernel's own node.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Dev {
    /// The path disko uses (and the installed system's `fileSystems` names).
    pub path: String,
    /// Partition `number` of the block device `parent` (a path as the layout names it).
    pub partition_of: Option<(String, u32)>,
}

impl Dev {
    pub fn plain(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            partition_of: None,
        }
    }
}

/// A content node, with the device it sits on.
#[derive(Debug, Clone, Serialize)]
pub struct Content {
    pub path: NodePath,
    pub dev: Dev,
    pub hooks: Hooks,
    pub kind: ContentKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentKind {
    Gpt(Gpt),
    Table(Table),
    Filesystem(Filesystem),
    Swap(Swap),
    Luks(Box<Luks>),
    LvmPv { vg: String },
    Mdraid { name: String },
    Zfs { pool: String },
    Btrfs(Btrfs),
    Bcachefs(BcachefsMember),
}

impl ContentKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Gpt(_) => "gpt",
            Self::Table(_) => "table",
            Self::Filesystem(_) => "filesystem",
            Self::Swap(_) => "swap",
            Self::Luks(_) => "luks",
            Self::LvmPv { .. } => "lvm_pv",
            Self::Mdraid { .. } => "mdraid",
            Self::Zfs { .. } => "zfs",
            Self::Btrfs(_) => "btrfs",
            Self::Bcachefs(_) => "bcachefs",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Gpt {
    pub efi_gpt_partition_first: bool,
    /// In creation order: disko's stable sort by priority over attribute-name order.
    pub partitions: Vec<GptPartition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GptPartition {
    pub path: NodePath,
    pub attr: String,
    pub name: String,
    /// `_index`: the partition number.
    pub index: u32,
    pub type_code: String,
    pub size: String,
    pub start: String,
    pub end: String,
    pub alignment: u64,
    pub priority: i64,
    pub uuid: Option<String>,
    pub attributes: Vec<u8>,
    pub label: String,
    pub hybrid: Option<Hybrid>,
    pub dev: Dev,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Hybrid {
    pub mbr_partition_type: Option<String>,
    pub mbr_bootable_flag: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Table {
    pub format: crate::disk::table::spec::LegacyFormat,
    pub partitions: Vec<TablePartition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TablePartition {
    pub path: NodePath,
    pub index: u32,
    pub part_type: crate::disk::table::spec::LegacyPartType,
    pub fs_type: Option<String>,
    pub name: Option<String>,
    pub start: String,
    pub end: String,
    pub flags: Vec<String>,
    pub bootable: bool,
    pub dev: Dev,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    pub format: String,
    pub extra_args: Vec<String>,
    pub mount_options: Vec<String>,
    pub mountpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Swap {
    pub extra_args: Vec<String>,
    pub mount_options: Vec<String>,
    pub priority: Option<i64>,
    pub discard_policy: Option<String>,
    pub random_encryption: bool,
    pub resume_device: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Luks {
    pub name: String,
    /// `boot.initrd.luks.devices.<name>` options, verbatim (keyFile, allowDiscards, ...).
    pub settings: serde_json::Map<String, serde_json::Value>,
    pub key_file: Option<String>,
    pub password_file: Option<String>,
    pub ask_password: bool,
    pub additional_key_files: Vec<String>,
    pub initrd_unlock: bool,
    pub extra_format_args: Vec<String>,
    pub extra_open_args: Vec<String>,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Btrfs {
    pub extra_args: Vec<String>,
    pub mount_options: Vec<String>,
    pub mountpoint: Option<String>,
    pub swap: Vec<SwapFile>,
    /// In attribute-name order.
    pub subvolumes: Vec<Subvolume>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Subvolume {
    pub path: NodePath,
    pub name: String,
    pub extra_args: Vec<String>,
    pub mount_options: Vec<String>,
    pub mountpoint: Option<String>,
    pub swap: Vec<SwapFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SwapFile {
    pub path: String,
    pub size: String,
    pub priority: Option<i64>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BcachefsMember {
    pub filesystem: String,
    pub label: String,
    pub extra_format_args: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LvmVg {
    pub path: NodePath,
    pub attr: String,
    pub name: String,
    /// In creation order: stable sort by priority over attribute-name order.
    pub lvs: Vec<Lv>,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Serialize)]
pub struct Lv {
    pub path: NodePath,
    pub name: String,
    pub size: String,
    pub lvm_type: Option<String>,
    pub pool: Option<String>,
    pub extra_args: Vec<String>,
    pub priority: i64,
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Mdadm {
    pub path: NodePath,
    pub attr: String,
    pub name: String,
    pub level: i64,
    pub metadata: String,
    pub extra_args: Vec<String>,
    pub content: Option<Content>,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nodev {
    pub path: NodePath,
    pub attr: String,
    pub fs_type: String,
    pub device: String,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Serialize)]
pub struct Zpool {
    pub path: NodePath,
    pub attr: String,
    pub name: String,
    pub mode: ZpoolMode,
    pub options: Vec<(String, String)>,
    pub root_fs_options: Vec<(String, String)>,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
    /// In attribute-name order, without the hidden `__root`.
    pub datasets: Vec<Dataset>,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ZpoolMode {
    /// `""`, `mirror`, `raidz`, ...
    Plain(String),
    Topology(Topology),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Topology {
    pub vdev: Vec<Vdev>,
    pub spare: Vec<String>,
    pub log: Vec<Vdev>,
    pub dedup: Vec<Vdev>,
    pub special: Vec<Vdev>,
    pub cache: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vdev {
    pub mode: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Dataset {
    pub path: NodePath,
    /// The name below the pool (`root/nix`).
    pub name: String,
    /// `<pool>/<name>`.
    pub full_name: String,
    pub options: Vec<(String, String)>,
    pub mount_options: Vec<String>,
    pub hooks: Hooks,
    pub kind: DatasetKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    Fs {
        mountpoint: Option<String>,
    },
    Volume {
        size: String,
        extra_args: Vec<String>,
        content: Option<Box<Content>>,
    },
}

impl Dataset {
    pub fn option(&self, key: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BcachefsFs {
    pub path: NodePath,
    pub attr: String,
    pub name: String,
    pub uuid: String,
    pub mount_options: Vec<String>,
    pub mountpoint: Option<String>,
    pub password_file: Option<String>,
    pub extra_format_args: Vec<String>,
    pub subvolumes: Vec<BcachefsSubvolume>,
    pub hooks: Hooks,
}

#[derive(Debug, Clone, Serialize)]
pub struct BcachefsSubvolume {
    pub path: NodePath,
    pub name: String,
    pub mountpoint: Option<String>,
    pub mount_options: Vec<String>,
}

impl Content {
    /// The node's children contents, in creation order (partitions, a LUKS payload, ...).
    pub fn children(&self) -> Vec<&Content> {
        match &self.kind {
            ContentKind::Gpt(g) => g
                .partitions
                .iter()
                .filter_map(|p| p.content.as_ref())
                .collect(),
            ContentKind::Table(t) => t
                .partitions
                .iter()
                .filter_map(|p| p.content.as_ref())
                .collect(),
            ContentKind::Luks(l) => l.content.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// This node and everything below it, in creation order.
    pub fn walk<'a>(&'a self, out: &mut Vec<&'a Content>) {
        out.push(self);
        for c in self.children() {
            c.walk(out);
        }
    }
}
