//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find struct
//! member offsets and tracepoint prototypes, so that no kernel struct offset is compiled in.
//!
//! Format: <https://docs.kernel.org/bpf/btf.html>.

use std::collections::HashMap;

/// BTF type kinds this reader distinguishes (the rest are skipped by size only).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// What can be wrong with a BTF blob or a lookup in it.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF: bad magic {0:#x}")]
    BadMagic(u16),
    #[error("truncated BTF: {0}")]
    Truncated(&'static str),
    #[error("unknown BTF kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
    #[error("kernel BTF: member {strukt}.{member} is a bitfield")]
    Bitfield { strukt: String, member: String },
    #[error("kernel BTF has no typedef {0}")]
    NoTypedef(String),
}

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// struct or union.
    Composite {
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag, pointer: a reference to another type.
    Ref {
        kind: u32,
        type_id: u32,
    },
    FuncProto {
        params: u32,
    },
    Other,
}

/// Parsed BTF: types by id and the string section.
pub(crate) struct Btf {
    types: Vec<(u32, Type)>, // (name_off, type); index = id - 1
    strings: Vec<u8>,
    by_name: HashMap<(u32, String), u32>, // (kind class, name) -> id
}

const CLASS_STRUCT: u32 = 1;
const CLASS_TYPEDEF: u32 = 2;

/// Reads the type record at `*at` (type `id`) and moves `*at` past it: its name offset and type.
fn parse_type(types_data: &[u8], at: &mut usize, id: u32) -> Result<(u32, Type), BtfError> {
    let name_off = u32_at(types_data, *at, "type")?;
    let info = u32_at(types_data, *at + 4, "type")?;
    let size_or_type = u32_at(types_data, *at + 8, "type")?;
    *at += 12;
    let kind = (info >> 24) & 0x1f;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let ty = match kind {
        KIND_STRUCT | KIND_UNION => {
            let mut members = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let m = *at + i * 12;
                let offset = u32_at(types_data, m + 8, "member")?;
                let (bit_offset, bitfield_size) = if kind_flag {
                    (offset & 0xff_ffff, offset >> 24)
                } else {
                    (offset, 0)
                };
                members.push(Member {
                    name_off: u32_at(types_data, m, "member")?,
                    type_id: u32_at(types_data, m + 4, "member")?,
                    bit_offset,
                    bitfield_size,
                });
            }
            *at += vlen * 12;
            Type::Composite { members }
        }
        KIND_PTR | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
            Type::Ref {
                kind,
                type_id: size_or_type,
            }
        }
        KIND_FUNC_PROTO => {
            *at += vlen * 8;
            Type::FuncProto {
                params: vlen as u32,
            }
        }
        KIND_INT | KIND_VAR | KIND_DECL_TAG => {
            *at += 4;
            Type::Other
        }
        KIND_ARRAY => {
            *at += 12;
            Type::Other
        }
        KIND_ENUM => {
            *at += vlen * 8;
            Type::Other
        }
        KIND_ENUM64 | KIND_DATASEC => {
            *at += vlen * 12;
            Type::Other
        }
        KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
        _ => return Err(BtfError::UnknownKind { kind, id }),
    };
    Ok((name_off, ty))
}

fn u32_at(data: &[u8], at: usize, what: &'static str) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Truncated(what))
}

impl Btf {
    /// Parses a little-endian BTF blob (as found in `/sys/kernel/btf/vmlinux`).
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = data
            .get(0..2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Truncated("header"))?;
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(data, 4, "header")? as usize;
        let type_off = u32_at(data, 8, "header")? as usize;
        let type_len = u32_at(data, 12, "header")? as usize;
        let str_off = u32_at(data, 16, "header")? as usize;
        let str_len = u32_at(data, 20, "header")? as usize;
        let types_data = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated("type section"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated("string section"))?
            .to_vec();

        let mut types = Vec::new();
        let mut at = 0;
        while at < types_data.len() {
            let id = types.len() as u32 + 1;
            types.push(parse_type(types_data, &mut at, id)?);
        }

        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        btf.index_names();
        Ok(btf)
    }

    /// Indexes structs, unions and typedefs by name.
    fn index_names(&mut self) {
        for (index, (name_off, ty)) in self.types.iter().enumerate() {
            let class = match ty {
                Type::Composite { .. } => CLASS_STRUCT,
                Type::Ref {
                    kind: KIND_TYPEDEF, ..
                } => CLASS_TYPEDEF,
                _ => continue,
            };
            if *name_off == 0 {
                continue;
            }
            let name = self.string(*name_off).to_string();
            // The first definition wins; later ones are duplicates from modules or forwards.
            self.by_name
                .entry((class, name))
                .or_insert(index as u32 + 1);
        }
    }

    fn string(&self, off: u32) -> &str {
        let tail = self.strings.get(off as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types
            .get((id as usize).checked_sub(1)?)
            .map(|(_, t)| t)
    }

    /// Follows typedefs and qualifiers (not pointers) to the underlying type id.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.get(id) {
                Some(Type::Ref { kind, type_id }) if *kind != KIND_PTR => id = *type_id,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `member` in `struct strukt`, looking into anonymous structs and unions.
    pub(crate) fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(&(CLASS_STRUCT, strukt.to_string()))
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        match self.find_member(id, member, 0) {
            Some((bits, 0)) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::Bitfield {
                strukt: strukt.to_string(),
                member: member.to_string(),
            }),
            None => Err(BtfError::NoMember {
                strukt: strukt.to_string(),
                member: member.to_string(),
            }),
        }
    }

    /// (bit offset, bitfield size) of `member` in composite `id`, searching anonymous members.
    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let Some(Type::Composite { members }) = self.get(self.strip(id)) else {
            return None;
        };
        for m in members {
            if m.name_off == 0 {
                if let Some((bits, size)) = self.find_member(m.type_id, member, depth + 1) {
                    return Some((m.bit_offset + bits, size));
                }
            } else if self.string(m.name_off) == member {
                return Some((m.bit_offset, m.bitfield_size));
            }
        }
        None
    }

    /// Number of parameters of the function-pointer typedef `name` (e.g. the
    /// `btf_trace_<tracepoint>` typedefs, whose first parameter is the tracepoint's `void *`).
    pub(crate) fn func_typedef_params(&self, name: &str) -> Result<u32, BtfError> {
        let id = *self
            .by_name
            .get(&(CLASS_TYPEDEF, name.to_string()))
            .ok_or_else(|| BtfError::NoTypedef(name.to_string()))?;
        let mut id = self.strip(id);
        if let Some(Type::Ref {
            kind: KIND_PTR,
            type_id,
        }) = self.get(id)
        {
            id = self.strip(*type_id);
        }
        match self.get(id) {
            Some(Type::FuncProto { params }) => Ok(*params),
            _ => Err(BtfError::NoTypedef(name.to_string())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a BTF blob from raw type records and a string table.
    pub(crate) fn blob(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for v in [
            24u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&type_bytes);
        out.extend_from_slice(strings);
        out
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 }
    }

    /// strings: 0:"" 1:"int" 5:"task" 10:"pid" 14:"tgid" 19:"flags" 25:"tp" 28:"anon_inner"
    const STRINGS: &[u8] = b"\0int\0task\0pid\0tgid\0flags\0tp\0anon_inner\0";

    fn sample() -> Vec<u8> {
        let types = [
            // 1: int, 4 bytes
            0,
            info(KIND_INT, 0, false),
            4,
            32,
            // 2: anonymous union { int tgid at byte 0 }
            0,
            info(KIND_UNION, 1, false),
            4,
            14,
            1,
            0,
            // 3: struct task { int pid @ 8 bytes; <anon union> @ 12 bytes; int flags:3 @ bit 128 }
            5,
            info(KIND_STRUCT, 3, true),
            24,
            10,
            1,
            64,
            0,
            2,
            96,
            19,
            1,
            (3 << 24) | 128,
            // 4: func proto (void *, int) -> 2 params
            0,
            info(KIND_FUNC_PROTO, 2, false),
            0,
            0,
            0,
            0,
            1,
            // 5: pointer to 4
            0,
            info(KIND_PTR, 0, false),
            4,
            // 6: typedef tp = 5
            25,
            info(KIND_TYPEDEF, 0, false),
            5,
        ];
        blob(&types, STRINGS)
    }

    #[test]
    fn finds_members_including_anonymous_ones() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("task", "pid"), Ok(8));
        assert_eq!(btf.member_offset("task", "tgid"), Ok(12));
        assert_eq!(
            btf.member_offset("task", "flags"),
            Err(BtfError::Bitfield {
                strukt: "task".into(),
                member: "flags".into()
            })
        );
        assert!(matches!(
            btf.member_offset("task", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("mm_struct", "pid"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn counts_prototype_parameters_through_typedef_and_pointer() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.func_typedef_params("tp"), Ok(2));
        assert!(btf.func_typedef_params("missing").is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(
            Btf::parse(b"\x00\x01").err(),
            Some(BtfError::BadMagic(0x100))
        );
        assert!(Btf::parse(b"\x9f").is_err());
        let mut truncated = sample();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
        for len in 0..sample().len() {
            let _ = Btf::parse(&sample()[..len]);
        }
    }

    #[test]
    fn reads_the_running_kernels_btf_when_present() {
        // Pure parsing of the real blob: no privileges needed (the file is world-readable).
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            panic!("/sys/kernel/btf/vmlinux is missing: this kernel lacks CONFIG_DEBUG_INFO_BTF");
        };
        let btf = Btf::parse(&data).unwrap();
        let pid = btf.member_offset("task_struct", "pid").unwrap();
        let tgid = btf.member_offset("task_struct", "tgid").unwrap();
        assert_eq!(tgid, pid + 4);
        assert!(btf.member_offset("mm_struct", "arg_start").is_ok());
        assert_eq!(btf.func_typedef_params("btf_trace_sched_switch"), Ok(5));
    }
}
