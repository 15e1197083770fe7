//! Points in user programs that custom metrics attach to: the probe syntax
//! (`usdt:BINARY:PROVIDER:NAME`, `uprobe:BINARY:SYMBOL`, `uretprobe:BINARY:SYMBOL`,
//! `syscall:NAME[,NAME...]`), and finding a function or a USDT probe in an ELF file.
//!
//! A USDT probe is a `nop` the compiler left at the probe site, described by an ELF note in
//! `.note.stapsdt` (the SystemTap SDT format that DTrace-style `sys/sdt.h` emits): its address,
//! the link-time address of `.stapsdt.base` (to correct for prelinking) and, when the probe
//! has one, the address of its semaphore, a counter the program tests before it spends time on
//! the probe's arguments. The kernel raises the semaphore in every process mapping the file
//! while a uprobe with that reference counter is attached.

use std::{fmt, path::PathBuf, str::FromStr};

use object::{
    elf,
    read::elf::{ElfFile64, FileHeader, ProgramHeader},
    Endianness, Object, ObjectSection, ObjectSymbol, SymbolKind,
};

/// Where a custom metric's occurrences come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbePoint {
    /// A USDT probe the program ships.
    Usdt {
        binary: PathBuf,
        provider: String,
        name: String,
    },
    /// A function's entry.
    Entry { binary: PathBuf, symbol: String },
    /// A function's return.
    Return { binary: PathBuf, symbol: String },
    /// The agent's own syscall accounting: these syscalls (by name).
    Syscalls(Vec<String>),
}

/// Names (providers, probes, symbols) are at most this long; paths at most `PATH_MAX`.
const MAX_NAME: usize = 256;
const PATH_MAX: usize = 4096;

impl FromStr for ProbePoint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let syntax = "write usdt:BINARY:PROVIDER:NAME, uprobe:BINARY:SYMBOL, uretprobe:BINARY:SYMBOL or syscall:NAME[,NAME...]";
        let (form, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("probe '{text}' has no form; {syntax}"))?;
        let name = |part: &str, what: &str| -> Result<String, String> {
            if part.is_empty() || part.len() > MAX_NAME || part.chars().any(char::is_whitespace) {
                return Err(format!(
                    "probe '{text}': {what} '{part}' must be 1 to {MAX_NAME} characters without spaces"
                ));
            }
            Ok(part.to_string())
        };
        let binary = |part: &str| -> Result<PathBuf, String> {
            if !part.starts_with('/') || part.len() > PATH_MAX || part.contains('\0') {
                return Err(format!(
                    "probe '{text}': the binary '{part}' must be an absolute path (as the processes that run it see it)"
                ));
            }
            Ok(PathBuf::from(part))
        };
        match form {
            "usdt" => {
                let mut parts = rest.rsplitn(3, ':');
                let (Some(probe), Some(provider), Some(path)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(format!("probe '{text}': {syntax}"));
                };
                Ok(ProbePoint::Usdt {
                    binary: binary(path)?,
                    provider: name(provider, "provider")?,
                    name: name(probe, "probe name")?,
                })
            }
            "uprobe" | "uretprobe" => {
                let (path, symbol) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| format!("probe '{text}': {syntax}"))?;
                let (binary, symbol) = (binary(path)?, name(symbol, "symbol")?);
                Ok(if form == "uprobe" {
                    ProbePoint::Entry { binary, symbol }
                } else {
                    ProbePoint::Return { binary, symbol }
                })
            }
            "syscall" => {
                let names = rest
                    .split(',')
                    .map(|n| name(n.trim(), "syscall"))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ProbePoint::Syscalls(names))
            }
            other => Err(format!("probe '{text}': unknown form '{other}'; {syntax}")),
        }
    }
}

impl fmt::Display for ProbePoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbePoint::Usdt {
                binary,
                provider,
                name,
            } => write!(f, "usdt:{}:{provider}:{name}", binary.display()),
            ProbePoint::Entry { binary, symbol } => {
                write!(f, "uprobe:{}:{symbol}", binary.display())
            }
            ProbePoint::Return { binary, symbol } => {
                write!(f, "uretprobe:{}:{symbol}", binary.display())
            }
            ProbePoint::Syscalls(names) => write!(f, "syscall:{}", names.join(",")),
        }
    }
}

impl ProbePoint {
    /// The file a uprobe goes into; `None` for the agent's own sources.
    pub(crate) fn binary(&self) -> Option<&std::path::Path> {
        match self {
            ProbePoint::Usdt { binary, .. }
            | ProbePoint::Entry { binary, .. }
            | ProbePoint::Return { binary, .. } => Some(binary),
            ProbePoint::Syscalls(_) => None,
        }
    }
}

/// One place in a file to put a uprobe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// File offset of the instruction (of the function's entry, for a return probe).
    pub(crate) offset: u64,
    pub(crate) retprobe: bool,
    /// File offset of the USDT semaphore (0: the probe has none).
    pub(crate) semaphore: u64,
}

/// Where `point` is in the ELF file `data` (a USDT probe may sit at several sites: every one).
/// The error names what is missing and what the file has instead.
pub(crate) fn locate(point: &ProbePoint, data: &[u8]) -> Result<Vec<Location>, String> {
    let file =
        ElfFile64::<Endianness>::parse(data).map_err(|e| format!("not a 64-bit ELF file ({e})"))?;
    match point {
        ProbePoint::Entry { symbol, .. } | ProbePoint::Return { symbol, .. } => {
            let address = function_address(&file, symbol)?;
            let offset = file_offset(&file, address).ok_or_else(|| {
                format!("function {symbol} at {address:#x} is in no loaded segment")
            })?;
            Ok(vec![Location {
                offset,
                retprobe: matches!(point, ProbePoint::Return { .. }),
                semaphore: 0,
            }])
        }
        ProbePoint::Usdt { provider, name, .. } => {
            let notes = usdt_notes(&file)?;
            let sites: Vec<Location> = notes
                .iter()
                .filter(|n| &n.provider == provider && &n.name == name)
                .map(|n| n.location)
                .collect();
            if sites.is_empty() {
                let wanted = format!("{provider}:{name}");
                let mut known: Vec<String> = notes
                    .iter()
                    .map(|n| format!("{}:{}", n.provider, n.name))
                    .collect();
                known.sort();
                known.dedup();
                let total = known.len();
                // The closest names first: the likely typo.
                known.sort_by_key(|k| strsim::damerau_levenshtein(k, &wanted));
                known.truncate(8);
                return Err(format!(
                    "no USDT probe {wanted}; it has {total}, the closest: {}",
                    known.join(", ")
                ));
            }
            Ok(sites)
        }
        ProbePoint::Syscalls(_) => Ok(Vec::new()),
    }
}

/// The address of function `symbol` (a defined function in `.symtab` or `.dynsym`).
fn function_address(file: &ElfFile64<'_, Endianness>, symbol: &str) -> Result<u64, String> {
    let found = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|s| {
            s.kind() == SymbolKind::Text
                && s.is_definition()
                && s.address() != 0
                && s.name() == Ok(symbol)
        })
        .map(|s| s.address());
    found.ok_or_else(|| {
        if file.symbols().next().is_none() {
            format!("no function {symbol}: the file is stripped (no .symtab) and does not export it; install its debug symbols' unstripped binary or probe an exported function")
        } else {
            format!("no function {symbol} in its symbol tables")
        }
    })
}

/// The file offset of virtual address `address`, from the loadable segments.
fn file_offset(file: &ElfFile64<'_, Endianness>, address: u64) -> Option<u64> {
    let endian = file.endian();
    file.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
        .find_map(|ph| {
            let vaddr = ph.p_vaddr(endian);
            let size = ph.p_filesz(endian);
            (address >= vaddr && address - vaddr < size)
                .then(|| address - vaddr + ph.p_offset(endian))
        })
}

/// One USDT probe site.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsdtNote {
    provider: String,
    name: String,
    location: Location,
}

/// `NT_STAPSDT`: the note type of a USDT probe (owner `stapsdt`).
const NT_STAPSDT: u32 = 3;

/// The USDT probes of `file` (`.note.stapsdt`).
fn usdt_notes(file: &ElfFile64<'_, Endianness>) -> Result<Vec<UsdtNote>, String> {
    let section = file
        .section_by_name(".note.stapsdt")
        .ok_or("no .note.stapsdt section: the binary ships no USDT probes (built without --enable-dtrace or sys/sdt.h?)")?;
    let data = section
        .data()
        .map_err(|e| format!(".note.stapsdt unreadable: {e}"))?;
    // Probes record the link-time address of `.stapsdt.base`; the section's address in the
    // file tells how far a prelink moved them.
    let base = file.section_by_name(".stapsdt.base").map(|s| s.address());
    let le = file.elf_header().is_little_endian();
    let mut notes = Vec::new();
    let mut at = 0usize;
    let word = |bytes: &[u8]| -> u32 {
        let array = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if le {
            u32::from_le_bytes(array)
        } else {
            u32::from_be_bytes(array)
        }
    };
    let long = |bytes: &[u8]| -> u64 {
        let mut array = [0u8; 8];
        array.copy_from_slice(&bytes[..8]);
        if le {
            u64::from_le_bytes(array)
        } else {
            u64::from_be_bytes(array)
        }
    };
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while at + 12 <= data.len() {
        let (namesz, descsz, kind) = (
            word(&data[at..]) as usize,
            word(&data[at + 4..]) as usize,
            word(&data[at + 8..]),
        );
        let name_at = at + 12;
        let desc_at = name_at.saturating_add(align4(namesz));
        let next = desc_at.saturating_add(align4(descsz));
        if next > data.len() || desc_at > data.len() {
            return Err(".note.stapsdt: a note runs past the section".into());
        }
        at = next;
        if kind != NT_STAPSDT || &data[name_at..name_at + namesz] != b"stapsdt\0" || descsz < 24 {
            continue;
        }
        let desc = &data[desc_at..desc_at + descsz];
        let (pc, note_base, semaphore) = (long(desc), long(&desc[8..]), long(&desc[16..]));
        let mut strings = desc[24..].split(|&b| b == 0);
        let (Some(provider), Some(name)) = (strings.next(), strings.next()) else {
            continue;
        };
        let moved = |address: u64| match base {
            Some(base) if note_base != 0 => address.wrapping_add(base).wrapping_sub(note_base),
            _ => address,
        };
        let Some(offset) = file_offset(file, moved(pc)) else {
            continue;
        };
        let semaphore = if semaphore == 0 {
            0
        } else {
            file_offset(file, moved(semaphore)).unwrap_or(0)
        };
        notes.push(UsdtNote {
            provider: String::from_utf8_lossy(provider).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            location: Location {
                offset,
                retprobe: false,
                semaphore,
            },
        });
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_syntax_parses_and_prints_back() {
        for text in [
            "usdt:/usr/lib/postgresql/15/bin/postgres:postgresql:query__start",
            "uprobe:/usr/bin/app:handle_request",
            "uretprobe:/usr/bin/app:handle_request",
            "syscall:read,write",
        ] {
            let point: ProbePoint = text.parse().expect(text);
            assert_eq!(point.to_string(), text);
        }
        assert_eq!(
            "usdt:/a:b:c".parse::<ProbePoint>(),
            Ok(ProbePoint::Usdt {
                binary: "/a".into(),
                provider: "b".into(),
                name: "c".into()
            })
        );
    }

    #[test]
    fn bad_points_say_what_is_wrong() {
        let error = |text: &str| text.parse::<ProbePoint>().unwrap_err();
        assert!(error("kprobe:x").contains("unknown form 'kprobe'"));
        assert!(error("uprobe:bin/app:main").contains("absolute path"));
        assert!(error("usdt:/bin/app:only").contains("usdt:BINARY:PROVIDER:NAME"));
        assert!(error("uprobe:/bin/app:").contains("symbol ''"));
        assert!(error("nothing").contains("no form"));
    }

    #[test]
    fn a_function_of_this_test_binary_is_found_in_a_loaded_segment() {
        let exe = std::fs::read("/proc/self/exe").expect("own binary");
        // `main` of the test harness, defined in every Rust test binary's symbol table.
        let point = ProbePoint::Entry {
            binary: "/proc/self/exe".into(),
            symbol: "main".into(),
        };
        let found = locate(&point, &exe).expect("main");
        assert_eq!(found.len(), 1);
        assert!(found[0].offset > 0 && found[0].offset < exe.len() as u64);
        let missing = ProbePoint::Entry {
            binary: "/proc/self/exe".into(),
            symbol: "no_such_function_anywhere".into(),
        };
        assert!(locate(&missing, &exe)
            .unwrap_err()
            .contains("no function no_such_function_anywhere"));
        assert!(locate(&point, b"#!/bin/sh\n")
            .unwrap_err()
            .contains("not a 64-bit ELF"));
    }
}
