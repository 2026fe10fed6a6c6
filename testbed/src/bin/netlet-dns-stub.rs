//! A stub DNS server for tests and benchmarks: it stands for the node's upstream (or for the
//! cluster DNS Service a pod falls back to) in a namespace of the test's. It answers the records
//! it is given and NXDOMAIN (with an SOA whose minimum is 30 s) for every other name, over UDP
//! and TCP. `TXT count.stub.` answers how many other queries it has received, so a test can tell
//! what reached it.
//!
//! `netlet-dns-stub --listen 192.0.2.53:53 --record 'api.example.com A 203.0.113.10 60'`

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::Parser;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{self, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Address to serve on (UDP and TCP).
    #[arg(long)]
    listen: SocketAddr,
    /// A record: `NAME TYPE VALUE TTL` (TYPE: A, AAAA, CNAME, TXT).
    #[arg(long)]
    record: Vec<String>,
}

struct Stub {
    records: Vec<(String, RecordType, RData, u32)>,
    queries: AtomicU64,
}

impl Stub {
    fn answer(&self, req: &[u8]) -> Option<Vec<u8>> {
        let msg = Message::from_vec(req).ok()?;
        if msg.metadata.message_type != MessageType::Query || msg.queries.len() != 1 {
            return None;
        }
        let q = &msg.queries[0];
        let qname = q.name().to_ascii().to_ascii_lowercase();
        let qname = if qname.ends_with('.') {
            qname
        } else {
            format!("{qname}.")
        };
        let mut out = Message::response(msg.metadata.id, OpCode::Query);
        out.metadata.recursion_desired = msg.metadata.recursion_desired;
        out.metadata.recursion_available = true;
        out.add_query(q.clone());
        if qname == "count.stub." {
            let n = self.queries.load(Ordering::SeqCst).to_string();
            out.add_answer(Record::from_rdata(
                q.name().clone(),
                0,
                RData::TXT(rdata::TXT::new(vec![n])),
            ));
            return out.to_vec().ok();
        }
        self.queries.fetch_add(1, Ordering::SeqCst);
        let mut exists = false;
        for (name, t, data, ttl) in &self.records {
            if *name != qname {
                continue;
            }
            exists = true;
            if *t == q.query_type() || *t == RecordType::CNAME {
                out.add_answer(Record::from_rdata(q.name().clone(), *ttl, data.clone()));
            }
        }
        if !exists {
            out.metadata.response_code = ResponseCode::NXDomain;
        }
        if out.answers.is_empty() {
            let soa = SOA::new(
                Name::from_ascii("ns.stub.").unwrap(),
                Name::from_ascii("hostmaster.stub.").unwrap(),
                1,
                7200,
                1800,
                86400,
                30,
            );
            out.add_authority(Record::from_rdata(Name::root(), 30, RData::SOA(soa)));
        }
        out.to_vec().ok()
    }
}

fn parse(r: &str) -> anyhow::Result<(String, RecordType, RData, u32)> {
    let f: Vec<&str> = r.split_whitespace().collect();
    anyhow::ensure!(f.len() == 4, "record {r:?}: NAME TYPE VALUE TTL");
    let name = if f[0].ends_with('.') {
        f[0].to_ascii_lowercase()
    } else {
        format!("{}.", f[0].to_ascii_lowercase())
    };
    let (t, data) = match f[1] {
        "A" => (
            RecordType::A,
            RData::A(f[2].parse::<std::net::Ipv4Addr>()?.into()),
        ),
        "AAAA" => (
            RecordType::AAAA,
            RData::AAAA(f[2].parse::<std::net::Ipv6Addr>()?.into()),
        ),
        "CNAME" => (
            RecordType::CNAME,
            RData::CNAME(rdata::CNAME(Name::from_ascii(f[2])?)),
        ),
        "TXT" => (
            RecordType::TXT,
            RData::TXT(rdata::TXT::new(vec![f[2].to_string()])),
        ),
        other => anyhow::bail!("record type {other}"),
    };
    Ok((name, t, data, f[3].parse()?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let records = args
        .record
        .iter()
        .map(|r| parse(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let stub = Arc::new(Stub {
        records,
        queries: AtomicU64::new(0),
    });
    let udp = Arc::new(tokio::net::UdpSocket::bind(args.listen).await?);
    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    let s = stub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = tcp.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                while let Ok(len) = c.read_u16().await {
                    let mut buf = vec![0; len as usize];
                    if c.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Some(out) = s.answer(&buf) else { return };
                    let mut framed = (out.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&out);
                    if c.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    println!("ready");
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = udp.recv_from(&mut buf).await?;
        if let Some(out) = stub.answer(&buf[..n]) {
            let _ = udp.send_to(&out, from).await;
        }
    }
}
