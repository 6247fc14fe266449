//! The layout contract: where file data lies in a diskc ext4 image.
//!
//! Two parts of the pipeline put file data into the image file, and they must agree to the
//! byte. The spool (`layer::spool`) writes each layer's data into the image file
//! while the layer streams, before the layout is planned; the ext4 planner then keeps that
//! data where it is and lays the metadata out around it. When data is not spooled in place
//! (a host directory, a tar stream), the planner places it itself, by the same rules. Both
//! follow this module and neither imports the other, so the two ways in give the same image.
//!
//! The rules:
//! - The image is made of [`BLOCK_SIZE`] blocks; a file's data is tracked in these blocks,
//!   and a block of zeros is a hole, never written.
//! - File data starts at block [`DATA_START`] (1 MiB), after the superblock and the group
//!   descriptors, whatever the image's size, lower layers first. It does not depend on the
//!   inode count or the directory sizes, so images that share a base layer share their
//!   leading blocks, which is what lets the chunk store deduplicate them.
//! - A file of [`ALIGN_FILES_FROM`] bytes or more starts on a multiple of [`ALIGN`] blocks
//!   (1 MiB), so its data keeps its alignment, and its chunks, whatever lies before it.
//! - Placed data: a file whose bytes already lie in the image file reports, for each run of
//!   its data blocks, the image block the run starts at ([`crate::tree::Content::placed`]).
//!   A run lies in one piece from there, at or after [`DATA_START`], and no two files' runs
//!   overlap; the planner copies elsewhere any file that breaks these rules.

/// The filesystem block: ext4's block size, and the unit of holes in trees, spools and
/// sparse files.
pub const BLOCK_SIZE: u64 = 4096;

/// The first block of file data: 1 MiB into the image.
pub const DATA_START: u64 = 256;

/// [`DATA_START`] in bytes.
pub const DATA_START_BYTES: u64 = DATA_START * BLOCK_SIZE;

/// Large files, and the regions the layout grows by, are aligned to this many blocks (1 MiB).
pub const ALIGN: u64 = 256;

/// [`ALIGN`] in bytes.
pub const ALIGN_BYTES: u64 = ALIGN * BLOCK_SIZE;

/// Files of this many bytes or more start on an [`ALIGN`] boundary.
pub const ALIGN_FILES_FROM: u64 = 1 << 20;
