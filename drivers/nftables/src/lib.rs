//! netlet-nftables: a thin nftables layer over netlink, shared by netlet's own drivers (bridge,
//! nft): batches of table, chain, set, element and rule messages sent as one transaction, and the
//! expressions those drivers use. Not part of the SDK: a third-party driver needs none of it.
//! No `nft` CLI: it re-reads the kernel's whole ruleset on every call.
//!
//! Messages come from `netlink-packet-netfilter`; expressions it does not model (nat, masq,
//! numgen, reject, ct, notrack, dynset, fib) are encoded here from `linux/netfilter/nf_tables.h`.
//!
//! Errors: the kernel reports a failed message by its sequence number; [`NftError`] names the
//! message by what it was asked to do ("add rule to chain X"). A failed batch changes nothing.
#![forbid(unsafe_code)]

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    GenMessage, Hook, HookNumber, Immediate, ListAttribute, Lookup, Meta, NfTablesMessage, Payload,
    RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList,
    SetElementMessage, SetFlags, SetMessage, TableAttribute, TableMessage, Verdict,
    VerdictAttribute,
};
pub use netlink_packet_netfilter::nftables::{MetaKey, Operator, Register};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Data type of verdict maps (`NFT_DATA_VERDICT`).
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// Above this many bytes a batch is sent as several transactions, in order.
const MAX_TRANSACTION_BYTES: usize = 32 << 20;

/// One expression of a rule.
pub type Expr = ListAttribute<ExpressionAttribute>;

/// The table families netlet uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// `ip`
    Ip,
    /// `ip6`
    Ip6,
    /// `inet`
    Inet,
    /// `bridge`: frames crossing a Linux bridge.
    Bridge,
}

impl Family {
    fn proto(self) -> NetfilterProtoFamily {
        match self {
            Family::Ip => NetfilterProtoFamily::IPv4,
            Family::Ip6 => NetfilterProtoFamily::IPv6,
            Family::Inet => NetfilterProtoFamily::Inet,
            Family::Bridge => NetfilterProtoFamily::Bridge,
        }
    }

    /// Name as `nft` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
            Family::Bridge => "bridge",
        }
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// "filter" or "nat".
    pub kind: &'static str,
    /// Netfilter hook number (NF_INET_PRE_ROUTING = 0 ... POST_ROUTING = 4).
    pub hook: u32,
    /// Priority (negative allowed).
    pub priority: i32,
}

/// Netfilter hooks.
pub mod hook {
    /// prerouting
    pub const PREROUTING: u32 = 0;
    /// input
    pub const INPUT: u32 = 1;
    /// forward
    pub const FORWARD: u32 = 2;
    /// output
    pub const OUTPUT: u32 = 3;
    /// postrouting
    pub const POSTROUTING: u32 = 4;
}

/// A set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// Name.
    pub name: String,
    /// Key length in bytes (concatenations: each field padded to 4 bytes).
    pub key_len: u32,
    /// Key type as `nft` names types (for listing only; e.g. 7 ipv4_addr, 8 ipv6_addr,
    /// 12 inet_proto, 13 inet_service, 19 mark; concatenations `(a << 6 | b) << 6 | c`).
    pub key_type: u32,
    /// Verdict map (else a plain set, or a data map with `data`).
    pub verdict_map: bool,
    /// A map to data of this (type, length in bytes), e.g. `ipv4_addr . inet_service`.
    pub data: Option<(u32, u32)>,
    /// Elements time out after this many ms (the set is updated from the packet path).
    pub timeout_ms: Option<u64>,
    /// Elements are ranges (`flags interval`): add them with [`Batch::add_intervals`].
    pub interval: bool,
}

/// An element's data in a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VerdictData {
    /// `goto chain`
    Goto(String),
    /// `jump chain`
    Jump(String),
    /// `drop`
    Drop,
    /// `accept`
    Accept,
}

fn verdict_attrs(v: &VerdictData) -> Vec<VerdictAttribute> {
    match v {
        VerdictData::Goto(c) => vec![
            VerdictAttribute::Code(Verdict::Goto),
            VerdictAttribute::Chain(c.clone()),
        ],
        VerdictData::Jump(c) => vec![
            VerdictAttribute::Code(Verdict::Jump),
            VerdictAttribute::Chain(c.clone()),
        ],
        VerdictData::Drop => vec![VerdictAttribute::Code(Verdict::Other(0))],
        VerdictData::Accept => vec![VerdictAttribute::Code(Verdict::Other(1))],
    }
}

/// A failed transaction.
#[derive(Debug, thiserror::Error)]
#[error("nftables: {what}: {message}")]
pub struct NftError {
    /// What failed ("add rule to chain X", "send").
    pub what: String,
    /// errno, when the kernel gave one.
    pub errno: Option<i32>,
    /// The reason.
    pub message: String,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display, errno: Option<i32>) -> NftError {
    NftError {
        what: what.into(),
        errno,
        message: e.to_string(),
    }
}

/// A list of changes to send as one transaction.
#[derive(Default)]
pub struct Batch {
    msgs: Vec<(NetlinkMessage<NetfilterMessage>, String)>,
    set_ids: u32,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    /// What each message asks, in order ("add chain c", ...).
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.msgs.iter().map(|(_, what)| what.as_str())
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Appends another batch's messages.
    pub fn append(&mut self, other: Batch) {
        self.msgs.extend(other.msgs);
    }

    fn push(&mut self, family: Family, m: NfTablesMessage, flags: u16, what: String) {
        let mut n = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(family.proto(), 0, 0),
            m,
        ));
        n.header.flags = NLM_F_REQUEST | flags;
        self.msgs.push((n, what));
    }

    /// Adds a table (no error if it exists).
    pub fn add_table(&mut self, family: Family, table: &str) {
        self.push(
            family,
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.into())],
            }),
            NLM_F_CREATE,
            format!("add table {} {table}", family.as_str()),
        );
    }

    /// Deletes a table and everything in it (it must exist).
    pub fn delete_table(&mut self, family: Family, table: &str) {
        self.push(
            family,
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(table.into())],
            }),
            0,
            format!("delete table {} {table}", family.as_str()),
        );
    }

    /// Makes the table exist and be empty: add (a no-op if present), delete, add.
    pub fn replace_table(&mut self, family: Family, table: &str) {
        self.add_table(family, table);
        self.delete_table(family, table);
        self.add_table(family, table);
    }

    /// Adds a chain; a base chain when `base` is given (policy accept).
    pub fn add_chain(&mut self, family: Family, table: &str, name: &str, base: Option<&BaseChain>) {
        let mut attributes = vec![
            ChainAttribute::Table(table.into()),
            ChainAttribute::Name(name.into()),
        ];
        if let Some(b) = base {
            attributes.push(ChainAttribute::Type(b.kind.into()));
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(HookNumber::Other(b.hook)),
                Hook::Priority(b.priority as u32),
            ]));
            attributes.push(ChainAttribute::Policy(1));
        }
        self.push(
            family,
            NfTablesMessage::NewChain(ChainMessage { attributes }),
            NLM_F_CREATE,
            format!("add chain {name}"),
        );
    }

    /// Removes every rule of a chain.
    pub fn flush_chain(&mut self, family: Family, table: &str, name: &str) {
        self.push(
            family,
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.into()),
                    RuleAttribute::Chain(name.into()),
                ],
            }),
            0,
            format!("flush chain {name}"),
        );
    }

    /// Deletes a chain with its rules (nothing may still jump to it).
    pub fn delete_chain(&mut self, family: Family, table: &str, name: &str) {
        self.push(
            family,
            NfTablesMessage::DeleteChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(table.into()),
                    ChainAttribute::Name(name.into()),
                ],
            }),
            0,
            format!("delete chain {name}"),
        );
    }

    /// Appends a rule to a chain.
    pub fn add_rule(&mut self, family: Family, table: &str, chain: &str, exprs: Vec<Expr>) {
        self.push(
            family,
            NfTablesMessage::NewRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(table.into()),
                    RuleAttribute::Chain(chain.into()),
                    RuleAttribute::Expressions(exprs),
                ],
            }),
            NLM_F_CREATE | NLM_F_APPEND,
            format!("add rule to chain {chain}"),
        );
    }

    /// Adds a set or map.
    pub fn add_set(&mut self, family: Family, table: &str, s: &SetSpec) {
        let mut flags = SetFlags::empty();
        if s.verdict_map || s.data.is_some() {
            flags |= SetFlags::Map;
        }
        let mut attributes = vec![
            SetAttribute::Table(table.into()),
            SetAttribute::Name(s.name.clone()),
            SetAttribute::KeyType(s.key_type),
            SetAttribute::KeyLen(s.key_len),
        ];
        if s.verdict_map {
            attributes.push(SetAttribute::DataType(NFT_DATA_VERDICT));
        } else if let Some((data_type, len)) = s.data {
            attributes.push(SetAttribute::DataType(data_type));
            attributes.push(SetAttribute::DataLen(len));
        }
        if s.interval {
            flags |= SetFlags::Interval;
        }
        if let Some(t) = s.timeout_ms {
            flags |= SetFlags::Timeout | SetFlags::Eval;
            attributes.push(SetAttribute::Timeout(t));
        }
        attributes.insert(2, SetAttribute::Flags(flags));
        // The kernel wants an id per new set (rules of the same batch may name it by id).
        self.set_ids += 1;
        attributes.push(SetAttribute::Id(self.set_ids));
        self.push(
            family,
            NfTablesMessage::NewSet(SetMessage { attributes }),
            NLM_F_CREATE,
            format!("add set {}", s.name),
        );
    }

    /// Deletes a set (no rule may still use it).
    pub fn delete_set(&mut self, family: Family, table: &str, name: &str) {
        self.push(
            family,
            NfTablesMessage::DeleteSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(table.into()),
                    SetAttribute::Name(name.into()),
                ],
            }),
            0,
            format!("delete set {name}"),
        );
    }

    fn elements(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: Vec<Vec<SetElementAttribute>>,
        add: bool,
    ) {
        // An attribute's length is 16 bits: elements go in messages of at most ~32 KiB.
        const CHUNK_BYTES: usize = 32 * 1024;
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for e in elems {
            let size = e.as_slice().buffer_len() + 4;
            if bytes + size > CHUNK_BYTES && !chunk.is_empty() {
                self.element_message(family, table, set, std::mem::take(&mut chunk), add);
                bytes = 0;
            }
            bytes += size;
            chunk.push(e);
        }
        if !chunk.is_empty() {
            self.element_message(family, table, set, chunk, add);
        }
    }

    fn element_message(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: Vec<Vec<SetElementAttribute>>,
        add: bool,
    ) {
        let n = elems.len();
        let m = SetElementMessage {
            attributes: vec![
                SetElementList::Table(table.into()),
                SetElementList::Set(set.into()),
                SetElementList::Elements(elems.into_iter().map(ListAttribute::Element).collect()),
            ],
        };
        if add {
            self.push(
                family,
                NfTablesMessage::NewSetElement(m),
                NLM_F_CREATE,
                format!("add {n} element(s) to {set}"),
            );
        } else {
            self.push(
                family,
                NfTablesMessage::DeleteSetElement(m),
                0,
                format!("delete {n} element(s) from {set}"),
            );
        }
    }

    /// Adds keys to a set.
    pub fn add_keys(&mut self, family: Family, table: &str, set: &str, keys: Vec<Vec<u8>>) {
        let elems = keys
            .into_iter()
            .map(|k| vec![SetElementAttribute::Key(DataAttribute::Value(k))])
            .collect();
        self.elements(family, table, set, elems, true);
    }

    /// Adds `key : verdict` elements to a verdict map.
    pub fn add_verdicts(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: Vec<(Vec<u8>, VerdictData)>,
    ) {
        let elems = elems
            .into_iter()
            .map(|(k, v)| {
                vec![
                    SetElementAttribute::Key(DataAttribute::Value(k)),
                    SetElementAttribute::Data(DataAttribute::Verdict(verdict_attrs(&v))),
                ]
            })
            .collect();
        self.elements(family, table, set, elems, true);
    }

    /// Adds `key : data` elements to a data map.
    pub fn add_data(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        elems: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let elems = elems
            .into_iter()
            .map(|(k, d)| {
                vec![
                    SetElementAttribute::Key(DataAttribute::Value(k)),
                    SetElementAttribute::Data(DataAttribute::Value(d)),
                ]
            })
            .collect();
        self.elements(family, table, set, elems, true);
    }

    /// The elements of an interval set for `nets`: each prefix's first address, and the
    /// address after its last flagged as an interval end (none when the prefix reaches the
    /// top of the address space), as `nft` sends them (it also sends a leading zero end,
    /// which the kernel does not need).
    fn interval_elements(nets: &[ipnet::IpNet]) -> Vec<Vec<SetElementAttribute>> {
        use netlink_packet_netfilter::nftables::SetElementFlags;
        let mut out = Vec::new();
        for n in nets {
            let (start, end): (Vec<u8>, Option<Vec<u8>>) = match n {
                ipnet::IpNet::V4(n) => (
                    n.network().octets().to_vec(),
                    u32::from(n.broadcast())
                        .checked_add(1)
                        .map(|e| e.to_be_bytes().to_vec()),
                ),
                ipnet::IpNet::V6(n) => (
                    n.network().octets().to_vec(),
                    u128::from(n.broadcast())
                        .checked_add(1)
                        .map(|e| e.to_be_bytes().to_vec()),
                ),
            };
            out.push(vec![SetElementAttribute::Key(DataAttribute::Value(start))]);
            if let Some(end) = end {
                out.push(vec![
                    SetElementAttribute::Key(DataAttribute::Value(end)),
                    SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
                ]);
            }
        }
        out
    }

    /// Adds prefixes to an interval set (they must not overlap its elements).
    pub fn add_intervals(&mut self, family: Family, table: &str, set: &str, nets: &[ipnet::IpNet]) {
        let elems = Self::interval_elements(nets);
        self.elements(family, table, set, elems, true);
    }

    /// Deletes prefixes from an interval set (each exactly as added).
    pub fn delete_intervals(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        nets: &[ipnet::IpNet],
    ) {
        let elems = Self::interval_elements(nets);
        self.elements(family, table, set, elems, false);
    }

    /// Deletes elements (sets or maps) by key.
    pub fn delete_keys(&mut self, family: Family, table: &str, set: &str, keys: Vec<Vec<u8>>) {
        let elems = keys
            .into_iter()
            .map(|k| vec![SetElementAttribute::Key(DataAttribute::Value(k))])
            .collect();
        self.elements(family, table, set, elems, false);
    }
}

fn control(c: ControlMessage, seq: u32) -> NetlinkMessage<NetfilterMessage> {
    let mut n = NetlinkMessage::from(NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        c,
    ));
    n.header.flags = NLM_F_REQUEST;
    n.header.sequence_number = seq;
    n
}

fn encode(m: &mut NetlinkMessage<NetfilterMessage>, buf: &mut Vec<u8>) {
    m.finalize();
    let start = buf.len();
    buf.resize(start + m.buffer_len(), 0);
    m.serialize(&mut buf[start..]);
}

/// How long the kernel may take to answer one transaction (a full sync of 100k elements takes
/// a few seconds) before it fails.
pub const KERNEL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A netlink socket for nftables transactions (in the caller's network namespace). Its calls
/// block: run them on a thread of their own (`spawn_blocking`), never on an async runtime's.
pub struct Conn {
    sock: Socket,
    seq: u32,
    rx: Vec<u8>,
}

impl Conn {
    /// Opens the socket.
    pub fn open() -> Result<Self, NftError> {
        let mut sock =
            Socket::new(NETLINK_NETFILTER).map_err(|e| err("socket", &e, e.raw_os_error()))?;
        sock.bind_auto()
            .map_err(|e| err("bind", &e, e.raw_os_error()))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| err("connect", &e, e.raw_os_error()))?;
        // Errors only come back for failed messages; a big batch must fit one send.
        let _ = sock.set_rx_buf_sz(4usize << 20);
        // No round trip waits for ever: a kernel that does not answer fails the transaction.
        nix::sys::socket::setsockopt(
            &sock,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(KERNEL_TIMEOUT.as_secs() as i64, 0),
        )
        .map_err(|e| err("set receive timeout", e, Some(e as i32)))?;
        Ok(Self {
            sock,
            seq: 0,
            rx: vec![0u8; 256 * 1024],
        })
    }

    /// Sends the batch as one transaction (several, in order, above 32 MiB) and waits for the
    /// kernel's verdict. All or nothing per transaction.
    pub fn send(&mut self, batch: Batch) -> Result<(), NftError> {
        if batch.msgs.is_empty() {
            return Ok(());
        }
        let mut whats: std::collections::HashMap<u32, String> = Default::default();
        let mut buf = Vec::new();
        let mut begun = false;
        for (mut m, what) in batch.msgs {
            if !begun {
                self.seq = self.seq.wrapping_add(1);
                encode(&mut control(ControlMessage::BatchBegin, self.seq), &mut buf);
                begun = true;
            }
            self.seq = self.seq.wrapping_add(1);
            m.header.sequence_number = self.seq;
            whats.insert(self.seq, what);
            encode(&mut m, &mut buf);
            if buf.len() >= MAX_TRANSACTION_BYTES {
                self.seq = self.seq.wrapping_add(1);
                encode(&mut control(ControlMessage::BatchEnd, self.seq), &mut buf);
                self.transact(&buf, &whats)?;
                buf.clear();
                whats.clear();
                begun = false;
            }
        }
        if begun {
            self.seq = self.seq.wrapping_add(1);
            encode(&mut control(ControlMessage::BatchEnd, self.seq), &mut buf);
            self.transact(&buf, &whats)?;
        }
        Ok(())
    }

    fn transact(
        &mut self,
        buf: &[u8],
        whats: &std::collections::HashMap<u32, String>,
    ) -> Result<(), NftError> {
        use nix::sys::socket::{setsockopt, sockopt};
        let _ = setsockopt(&self.sock, sockopt::SndBufForce, &(buf.len() + 64 * 1024));
        self.sock
            .send(buf, 0)
            .map_err(|e| err("send", &e, e.raw_os_error()))?;
        // A request after the batch: its answer means every message before it was handled.
        self.seq = self.seq.wrapping_add(1);
        let fence = self.seq;
        let mut getgen = NetlinkMessage::from(NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            NfTablesMessage::GetGen(GenMessage { attributes: vec![] }),
        ));
        getgen.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        getgen.header.sequence_number = fence;
        let mut gb = Vec::new();
        encode(&mut getgen, &mut gb);
        self.sock
            .send(&gb, 0)
            .map_err(|e| err("send", &e, e.raw_os_error()))?;
        let mut first_error: Option<NftError> = None;
        loop {
            let n = self
                .sock
                .recv(&mut &mut self.rx[..], 0)
                .map_err(|e| err("recv", &e, e.raw_os_error()))?;
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(self.rx[off..off + 4].try_into().unwrap()) as usize;
                if len < 16 || off + len > n {
                    break;
                }
                let seq = u32::from_ne_bytes(self.rx[off + 8..off + 12].try_into().unwrap());
                let reply =
                    NetlinkMessage::<NetfilterMessage>::deserialize(&self.rx[off..off + len]);
                off += (len + 3) & !3;
                if let Ok(NetlinkMessage {
                    payload: NetlinkPayload::Error(e),
                    ..
                }) = &reply
                    && let Some(code) = e.code
                    && seq != fence
                    && first_error.is_none()
                {
                    let what = whats
                        .get(&seq)
                        .cloned()
                        .unwrap_or_else(|| format!("message {seq} of the batch"));
                    first_error = Some(err(what, e.to_io(), Some(-code.get())));
                }
                if seq == fence
                    && matches!(
                        &reply,
                        Ok(NetlinkMessage {
                            payload: NetlinkPayload::Error(_),
                            ..
                        })
                    )
                {
                    return match first_error {
                        Some(e) => Err(e),
                        None => Ok(()),
                    };
                }
            }
        }
    }
}

// ---- expressions ----

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn other(name: &str, attrs: Vec<(u16, Vec<u8>)>) -> Expr {
    Expressions::Other {
        expression_type: name.into(),
        attributes: attrs
            .into_iter()
            .map(|(k, v)| DefaultNla::new(k, v))
            .collect(),
    }
    .into()
}

fn reg(r: Register) -> Vec<u8> {
    be32(u32::from(r))
}

/// Payload bases.
pub mod base {
    /// Link-layer (Ethernet) header.
    pub const LINK: u32 = 0;
    /// Network header.
    pub const NETWORK: u32 = 1;
    /// Transport header.
    pub const TRANSPORT: u32 = 2;
}

/// Loads `len` bytes at `offset` of a header into `dreg`.
pub fn payload(base: u32, offset: u32, len: u32, dreg: Register) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

/// Matches when the address at `offset` of the network header (4 bytes for an IPv4 CIDR, 16
/// for IPv6) is (`Equal`) or is not (`NotEqual`) in `cidr`; uses Reg1.
pub fn addr_in(offset: u32, cidr: &ipnet::IpNet, op: Operator) -> Vec<Expr> {
    let (net, mask) = match cidr {
        ipnet::IpNet::V4(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
        ipnet::IpNet::V6(n) => (n.network().octets().to_vec(), n.netmask().octets().to_vec()),
    };
    let len = net.len();
    vec![
        payload(base::NETWORK, offset, len as u32, Register::Reg1),
        bitwise(Register::Reg1, Register::Reg1, mask, vec![0; len]),
        cmp(op, Register::Reg1, net),
    ]
}

/// Loads a meta key into `dreg`.
pub fn meta(key: MetaKey, dreg: Register) -> Expr {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)]).into()
}

/// Sets a meta key from `sreg`.
pub fn meta_set(key: MetaKey, sreg: Register) -> Expr {
    Expressions::Meta(vec![Meta::Key(key), Meta::SourceRegister(sreg)]).into()
}

/// Compares `sreg` with `data`; the rule stops here when false.
pub fn cmp(op: Operator, sreg: Register, data: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(sreg),
        Cmp::Op(op),
        Cmp::Data(DataAttribute::Value(data)),
    ])
    .into()
}

/// `dreg = (sreg & mask) ^ xor`.
pub fn bitwise(sreg: Register, dreg: Register, mask: Vec<u8>, xor: Vec<u8>) -> Expr {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(sreg),
        Bitwise::DestinationRegister(dreg),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ])
    .into()
}

/// Looks `sreg` up in a set (match when present), or in a verdict map (`dreg` Verdict).
pub fn lookup(set: &str, sreg: Register, dreg: Option<Register>) -> Expr {
    let mut a = vec![Lookup::Set(set.into()), Lookup::SourceRegister(sreg)];
    if let Some(d) = dreg {
        a.push(Lookup::DestinationRegister(d));
    }
    Expressions::Lookup(a).into()
}

/// Matches when `sreg` is not in the set (`!= @set`).
pub fn lookup_absent(set: &str, sreg: Register) -> Expr {
    Expressions::Lookup(vec![
        Lookup::Set(set.into()),
        Lookup::SourceRegister(sreg),
        Lookup::Flags(1), // NFT_LOOKUP_F_INV
    ])
    .into()
}

/// A verdict.
pub fn verdict(v: &VerdictData) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(verdict_attrs(v))),
    ])
    .into()
}

/// `return`
pub fn ret() -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(Register::Verdict),
        Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(
            Verdict::Return,
        )])),
    ])
    .into()
}

/// Loads a constant into `dreg`.
pub fn immediate(dreg: Register, data: Vec<u8>) -> Expr {
    Expressions::Immediate(vec![
        Immediate::DestinationRegister(dreg),
        Immediate::Data(DataAttribute::Value(data)),
    ])
    .into()
}

/// DNAT to the address in `addr` and the port in `port` (network order).
pub fn dnat(v6: bool, addr: Register, port: Register) -> Expr {
    other(
        "nat",
        vec![
            (1, be32(1)),                       // NFTA_NAT_TYPE = NFT_NAT_DNAT
            (2, be32(if v6 { 10 } else { 2 })), // NFTA_NAT_FAMILY
            (3, reg(addr)),                     // NFTA_NAT_REG_ADDR_MIN
            (5, reg(port)),                     // NFTA_NAT_REG_PROTO_MIN
        ],
    )
}

/// Masquerade, ports fully randomised.
pub fn masquerade() -> Expr {
    other("masq", vec![(1, be32(0x10))]) // NF_NAT_RANGE_PROTO_RANDOM_FULLY
}

/// A random number in `0..modulus` into `dreg`.
pub fn numgen_random(dreg: Register, modulus: u32) -> Expr {
    other(
        "numgen",
        vec![(1, reg(dreg)), (2, be32(modulus)), (3, be32(1))], // DREG, MODULUS, TYPE=RANDOM
    )
}

/// Reject with a TCP reset (the caller sees "connection refused", also from the node itself,
/// where an ICMP error would not reach the socket).
pub fn reject_tcp_reset() -> Expr {
    other("reject", vec![(1, be32(1))]) // NFTA_REJECT_TYPE = NFT_REJECT_TCP_RST
}

/// Reject with ICMP(v6) port unreachable (UDP and SCTP callers see "connection refused").
pub fn reject_port_unreachable(v6: bool) -> Expr {
    // NFTA_REJECT_TYPE = NFT_REJECT_ICMP_UNREACH, NFTA_REJECT_ICMP_CODE = port unreachable.
    other(
        "reject",
        vec![(1, be32(0)), (2, vec![if v6 { 4 } else { 3 }])],
    )
}

/// `notrack`: the packet is not tracked by conntrack (valid in prerouting and output at the
/// raw priority, before conntrack sees it); nat rules then never see it either.
pub fn notrack() -> Expr {
    other("notrack", Vec::new())
}

/// The conntrack state bits into `dreg` (`ct state`).
pub fn ct_state(dreg: Register) -> Expr {
    other("ct", vec![(1, reg(dreg)), (2, be32(0))]) // DREG, KEY = NFT_CT_STATE
}

/// `ct state new` bit.
pub const CT_STATE_NEW: u32 = 1 << 3;

/// Adds the key in `key` to a timed set, or refreshes its timeout when present
/// (`update @set { key timeout T }`); `timeout_ms` overrides the set's.
pub fn dynset_update(set: &str, key: Register, timeout_ms: u64) -> Expr {
    dynset(set, 1, key, timeout_ms)
}

fn dynset(set: &str, op: u32, key: Register, timeout_ms: u64) -> Expr {
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    // SET_NAME, OP (ADD 0, UPDATE 1, DELETE 2), SREG_KEY, TIMEOUT (ms, be64)
    let attrs = vec![
        (1, name),
        (3, be32(op)),
        (4, reg(key)),
        (6, timeout_ms.to_be_bytes().to_vec()),
    ];
    other("dynset", attrs)
}

/// The address type of the destination (`fib daddr type`) into `dreg`.
pub fn fib_daddr_type(dreg: Register) -> Expr {
    // DREG, RESULT = NFT_FIB_RESULT_ADDRTYPE, FLAGS = NFTA_FIB_F_DADDR
    other("fib", vec![(1, reg(dreg)), (2, be32(3)), (3, be32(2))])
}

/// The address type of the source (`fib saddr type`) into `dreg`.
pub fn fib_saddr_type(dreg: Register) -> Expr {
    other("fib", vec![(1, reg(dreg)), (2, be32(3)), (3, be32(1))])
}

/// `RTN_LOCAL`, as `fib ... type` stores it.
pub const RTN_LOCAL: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_names_every_message() {
        let mut b = Batch::new();
        b.replace_table(Family::Ip, "t");
        b.add_chain(Family::Ip, "t", "c", None);
        b.add_rule(Family::Ip, "t", "c", vec![masquerade()]);
        b.delete_keys(Family::Ip, "t", "s", vec![]);
        assert_eq!(b.len(), 5, "an empty element list sends nothing");
        assert_eq!(b.msgs[4].1, "add rule to chain c");
        // Attribute lengths are 16 bits: 10k elements go in several messages.
        b.add_keys(
            Family::Ip,
            "t",
            "s",
            (0u32..10_000).map(|i| i.to_ne_bytes().repeat(3)).collect(),
        );
        let parts: Vec<&String> = b.msgs[5..].iter().map(|m| &m.1).collect();
        assert!(parts.len() > 1, "{parts:?}");
        let total: usize = parts
            .iter()
            .map(|p| {
                p.trim_start_matches("add ")
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        assert_eq!(total, 10_000);
    }
}
