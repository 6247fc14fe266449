use super::*;

/// Spools `files` (slot, bytes) into a spool file in `dir`, keeps those marked live,
/// settles, and checks every live file reads back and lies where `placed` says.
fn settle_in(
    dir: &Path,
    slot_bytes: u64,
    files: &[(u32, Vec<u8>, bool)],
    layer_of: fn(u32) -> u32,
) -> io::Result<(File, Vec<SpoolRef>)> {
    let spool = SpoolFile { slot_bytes, ..SpoolFile::temp_in(dir).unwrap() };
    let mut writers: Vec<(u32, SpoolWriter)> = Vec::new();
    let mut refs = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    for (slot, bytes, live) in files {
        if !writers.iter().any(|(s, _)| s == slot) {
            writers.push((*slot, spool.slot(*slot).unwrap()));
        }
        let w = &mut writers.iter_mut().find(|(s, _)| s == slot).unwrap().1;
        w.spool().set_layer(layer_of(*slot));
        let spooled = w.copy_file(&mut &bytes[..], bytes.len() as u64, &mut buf).ok().unwrap();
        refs.push((spooled.content, *live));
    }
    let live: Vec<SpoolRef> = refs.iter().filter(|(_, l)| *l).map(|(r, _)| r.clone()).collect();
    let file = spool.settle(&live)?;
    for ((r, is_live), (_, bytes, _)) in refs.iter().zip(files) {
        if !is_live {
            continue;
        }
        let mut back = vec![0u8; bytes.len()];
        r.read_at(0, &mut back).unwrap();
        assert_eq!(&back, bytes);
        for (run, start) in r.runs.iter().zip(r.placed().unwrap()) {
            let len = ((run.blocks.end - run.blocks.start) * BLOCK_SIZE) as usize;
            let mut image = vec![0u8; len];
            file.read_exact_at(&mut image, start * BLOCK_SIZE).unwrap();
            let from = (run.blocks.start * BLOCK_SIZE) as usize;
            let mut want = bytes[from..(from + len).min(bytes.len())].to_vec();
            want.resize(len, 0);
            assert_eq!(image, want);
        }
    }
    Ok((file, live))
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// Slots in the opposite order of layers, as a stream delivers them: copied.
fn check_reordered(dir: &Path) {
    // Even bytes: never inside a pattern, whose bytes are all odd.
    let secret = b"SECRET".repeat(2048);
    let mut sparse = vec![0u8; 3 << 20];
    sparse[2 << 20..(2 << 20) + 100].copy_from_slice(&pattern(100, 3));
    let files = vec![
        (1, pattern(5000, 1), true),
        (1, secret.clone(), false),
        (1, sparse, true),
        (2, pattern(2 << 20, 2), true),
        (3, secret.clone(), false),
    ];
    let (file, live) = settle_in(dir, SLOT_BYTES, &files, |slot| 10 - slot).unwrap();
    // Layer order is the reverse of slot order: slot 3 (nothing live) adds nothing,
    // slot 2 comes first, at 1 MiB, slot 1 on the next whole MiB.
    let starts: Vec<u64> = live.iter().map(|r| r.placed().unwrap()[0] * BLOCK_SIZE).collect();
    assert_eq!(starts[2], DATA_START_BYTES);
    assert_eq!(starts[0], DATA_START_BYTES + (2 << 20));
    // A file of 1 MiB or more starts on a MiB.
    assert_eq!(starts[1] % MIB, 0);
    let len = file.metadata().unwrap().len();
    assert_eq!(len, DATA_START_BYTES + (2 << 20) + (2 << 20));
    // What no file keeps reads as zeros: the deleted file's bytes are gone.
    let mut all = vec![0u8; len as usize];
    file.read_exact_at(&mut all, 0).unwrap();
    assert!(!all.windows(secret.len()).any(|w| w == secret.as_slice()));
}

/// Slots in layer order.
fn check_in_order(dir: &Path) {
    let files = vec![
        (0, pattern(3 << 20, 1), true),
        (0, b"SECRET".repeat(700_000), false),
        (2, pattern(10_000, 2), true),
        (5, pattern(5 << 20, 3), true),
    ];
    let (file, live) = settle_in(dir, SLOT_BYTES, &files, |slot| slot).unwrap();
    let starts: Vec<u64> = live.iter().map(|r| r.placed().unwrap()[0] * BLOCK_SIZE).collect();
    assert_eq!(starts, [DATA_START_BYTES, DATA_START_BYTES + (3 << 20), DATA_START_BYTES + (4 << 20)]);
    assert_eq!(file.metadata().unwrap().len(), DATA_START_BYTES + (9 << 20));
}

#[test]
fn settling_keeps_live_data_in_layer_order_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    check_reordered(dir.path());
    check_in_order(dir.path());
}

#[test]
fn a_layer_that_lands_on_its_own_slot_moves_without_harm() {
    // 3 MiB slots: the second layer moves 1 MiB down, onto itself; the third onto the
    // second's old place. Their dead middles must read as zeros where they land.
    let dir = tempfile::tempdir().unwrap();
    let secret = b"SECRET".repeat(200_000);
    let files = vec![
        (0, pattern(2 << 20, 1), true),
        (1, pattern(1 << 20, 2), true),
        (1, secret.clone(), false),
        (1, pattern(4096, 3), true),
        (2, pattern(1 << 20, 4), true),
        (2, secret, false),
        (2, pattern(4096, 5), true),
    ];
    let (file, live) = settle_in(dir.path(), 3 << 20, &files, |slot| slot).unwrap();
    let starts: Vec<u64> = live.iter().map(|r| (r.placed().unwrap()[0] * BLOCK_SIZE) >> 20).collect();
    assert_eq!(starts, [1, 3, 5, 6, 8]);
    assert_eq!(file.metadata().unwrap().len(), 9 << 20);
    let mut middle = vec![1u8; 1 << 20];
    for at in [4 << 20, 7 << 20] {
        file.read_exact_at(&mut middle, at).unwrap();
        assert!(fileio::is_zero(&middle), "stale bytes at {at}");
    }
    // Layers that would land on a slot still to be moved are refused.
    let fits = vec![(0, pattern(3 << 20, 1), true), (1, pattern(3 << 20, 2), true)];
    assert!(settle_in(dir.path(), 3 << 20, &fits, |slot| slot).is_ok());
    let e = settle_in(dir.path(), 3 << 20, &fits, |slot| 1 - slot).err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}

#[test]
fn settling_works_on_tmpfs_too() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    check_reordered(dir.path());
    check_in_order(dir.path());
}
