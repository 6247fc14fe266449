//! Finding the all-zero blocks of file data, so they become holes instead of blocks.

use std::ops::Range;

use super::BLOCK_SIZE;
use crate::fileio::is_zero;

/// Runs of blocks of `bytes` that hold at least one nonzero byte.
pub fn data_blocks_of(bytes: &[u8]) -> Vec<Range<u64>> {
    let mut scanner = DataBlockScanner::default();
    scanner.feed(bytes);
    scanner.finish()
}

/// Feeds file bytes in any pieces; reports which [`BLOCK_SIZE`] blocks hold data.
#[derive(Default)]
pub struct DataBlockScanner {
    runs: Vec<Range<u64>>,
    /// Index of the block being filled, and whether it has seen a nonzero byte.
    block: u64,
    filled: u64,
    nonzero: bool,
}

impl DataBlockScanner {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = ((BLOCK_SIZE - self.filled) as usize).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            if !self.nonzero && !is_zero(head) {
                self.nonzero = true;
            }
            self.filled += take as u64;
            bytes = rest;
            if self.filled == BLOCK_SIZE {
                self.close_block();
            }
        }
    }

    fn close_block(&mut self) {
        if self.nonzero {
            match self.runs.last_mut() {
                Some(run) if run.end == self.block => run.end += 1,
                _ => self.runs.push(self.block..self.block + 1),
            }
        }
        self.block += 1;
        self.filled = 0;
        self.nonzero = false;
    }

    pub fn finish(mut self) -> Vec<Range<u64>> {
        if self.filled > 0 {
            self.close_block();
        }
        self.runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_are_left_out_in_any_feeding() {
        let mut bytes = vec![0u8; 5 * BLOCK_SIZE as usize + 10];
        bytes[10] = 1; // block 0
        bytes[2 * BLOCK_SIZE as usize] = 1; // block 2
        bytes[3 * BLOCK_SIZE as usize + 4095] = 1; // block 3
        bytes[5 * BLOCK_SIZE as usize + 9] = 1; // partial block 5
        let expect = vec![0..1, 2..4, 5..6];
        assert_eq!(data_blocks_of(&bytes), expect);
        for piece in [1, 7, 4096, 5000] {
            let mut s = DataBlockScanner::default();
            bytes.chunks(piece).for_each(|c| s.feed(c));
            assert_eq!(s.finish(), expect, "piece size {piece}");
        }
    }

    #[test]
    fn empty_and_all_zero_have_no_data() {
        assert!(data_blocks_of(&[]).is_empty());
        assert!(data_blocks_of(&[0; 10000]).is_empty());
    }
}
