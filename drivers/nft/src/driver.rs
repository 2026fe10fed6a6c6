//! The Services face of the nft driver: batches checked, turned into the few nftables objects
//! they change, sent as one transaction, and only then recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

use netlet_nftables::{Batch, Conn, NftError};
use netlet_sdk::generation::{self, Applied};
use netlet_sdk::parts::Parts;
use netlet_sdk::proto::{
    Endpoint, ListServicesRequest, ListServicesResponse, ProgramServiceRequest,
    ProgramServiceResponse, Service, ServiceKey, services_server::Services,
};
use netlet_sdk::state::{ServiceTable, apply_host_ports};
use netlet_sdk::validate;
use tonic::{Request, Response, Status};

use crate::conntrack;
use crate::ruleset::{self, Claim, Class, Fam, Objects, Plan, Settings};

type Key = (String, String);

fn k(key: &ServiceKey) -> Key {
    (key.namespace.clone(), key.name.clone())
}

/// A Service as a batch leaves it: the object and its endpoints by address.
type Entry = (Option<Service>, BTreeMap<String, Endpoint>);

struct State {
    table: ServiceTable,
    /// Per Service, its objects in the ip and ip6 tables.
    objects: HashMap<Key, [Objects; 2]>,
    /// The objects of every pod's host ports, in the ip and ip6 tables.
    host_ports: [Objects; 2],
    /// Backend addresses with the number of Services leading to them (the `hairpin` set).
    hairpin: HashMap<IpAddr, u32>,
    /// The classes whose chains exist, in the ip and ip6 tables (kept once made: few).
    classes: [BTreeSet<Class>; 2],
    /// Which Service holds each address . protocol . port and NodePort (the first to ask).
    claims: HashMap<Claim, Key>,
    /// Services left out of a claim another holds, to look at again when it is released.
    blocked: HashMap<Claim, BTreeSet<Key>>,
    conn: Conn,
}

impl State {
    /// The `hairpin` elements to add and delete, per family, for the given changes in the number
    /// of Services leading to each address.
    fn hairpin_changes(&self, pins: &BTreeMap<IpAddr, i64>) -> [(Vec<IpAddr>, Vec<IpAddr>); 2] {
        let mut out: [(Vec<IpAddr>, Vec<IpAddr>); 2] = Default::default();
        for (ip, d) in pins {
            let now = i64::from(self.hairpin.get(ip).copied().unwrap_or(0));
            let fam = if ip.is_ipv4() { Fam::V4 } else { Fam::V6 };
            let (add, del) = &mut out[fam as usize];
            match (now, now + d) {
                (0, n) if n > 0 => add.push(*ip),
                (n, 0) if n > 0 => del.push(*ip),
                _ => {}
            }
        }
        out
    }

    /// Records the hairpin counts once the transaction committed.
    fn commit_pins(&mut self, pins: BTreeMap<IpAddr, i64>) {
        for (ip, d) in pins {
            let n = i64::from(self.hairpin.get(&ip).copied().unwrap_or(0)) + d;
            if n > 0 {
                self.hairpin.insert(ip, n as u32);
            } else {
                self.hairpin.remove(&ip);
            }
        }
    }

    /// Records the batch's claims once the transaction committed: who holds what now, and who
    /// waits for what (`touched` Services wait again only for what they were refused now).
    fn commit_claims<V>(
        &mut self,
        taken: HashMap<Claim, Option<Key>>,
        touched: &BTreeMap<Key, V>,
        conflicts: Vec<(Claim, Key)>,
    ) {
        for (c, owner) in taken {
            match owner {
                Some(k) => self.claims.insert(c, k),
                None => self.claims.remove(&c),
            };
        }
        for waiting in self.blocked.values_mut() {
            waiting.retain(|k| !touched.contains_key(k));
        }
        self.blocked.retain(|_, w| !w.is_empty());
        for (c, key) in conflicts {
            tracing::warn!(
                service = %format!("{}/{}", key.0, key.1),
                held_by = ?self.claims.get(&c).map(|o| format!("{}/{}", o.0, o.1)),
                what = %ruleset::describe(&c),
                "left out: another Service holds it"
            );
            self.blocked.entry(c).or_default().insert(key);
        }
    }
}

/// The driver.
pub struct Nft {
    settings: Settings,
    state: Mutex<State>,
    /// Parts of a full sync sent in parts, until the last.
    parts: Mutex<Parts<ProgramServiceRequest>>,
}

fn nft_status(e: NftError) -> Status {
    Status::internal(e.to_string())
}

impl Nft {
    /// Opens netlink and replaces the driver's tables with empty skeletons (leftovers of an
    /// earlier run go; other tables are never touched).
    pub fn start(settings: Settings) -> Result<Self, NftError> {
        let mut conn = Conn::open()?;
        let mut b = Batch::new();
        for fam in Fam::ALL {
            ruleset::skeleton(&settings, fam, &mut b);
        }
        conn.send(b)?;
        // Host ports on 127.0.0.1 are sent on to pods with a loopback source (then
        // masqueraded): the kernel routes such packets off the node only with route_localnet.
        // The skeleton drops new connections from elsewhere to 127.0.0.0/8 that it lets in.
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1") {
            tracing::warn!(error = %e, "cannot set route_localnet: host ports will not answer on 127.0.0.1");
        }
        Ok(Self {
            settings,
            state: Mutex::new(State {
                table: ServiceTable::default(),
                objects: HashMap::new(),
                host_ports: Default::default(),
                hairpin: HashMap::new(),
                classes: Default::default(),
                claims: HashMap::new(),
                blocked: HashMap::new(),
                conn,
            }),
            parts: Mutex::default(),
        })
    }

    /// What is applied.
    pub fn applied(&self) -> Result<Applied, Status> {
        self.state
            .lock()
            .map(|st| st.table.applied())
            .map_err(|_| Status::internal("state lock poisoned"))
    }

    /// Applies a validated batch.
    pub fn program(&self, req: &ProgramServiceRequest) -> Result<Applied, Status> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Status::internal("state lock poisoned"))?;
        if !st.table.applied().check(generation::Batch::from(req))? {
            return Ok(st.table.applied());
        }
        let mut post = after(&st, req);
        let empty = [Objects::default(), Objects::default()];
        // Claims the touched Services held are released (in this batch's view: `taken`
        // overlays `st.claims`); Services waiting for them are looked at again.
        let mut taken: HashMap<Claim, Option<Key>> = HashMap::new();
        let mut waiters = BTreeSet::new();
        for key in post.keys() {
            let old = st.objects.get(key).unwrap_or(&empty);
            for fam in Fam::ALL {
                for c in ruleset::claims(&old[fam as usize], fam) {
                    if st.claims.get(&c) == Some(key) {
                        waiters.extend(st.blocked.get(&c).into_iter().flatten().cloned());
                        taken.insert(c, None);
                    }
                }
            }
        }
        if !req.full_sync {
            for w in waiters {
                if let std::collections::btree_map::Entry::Vacant(v) = post.entry(w) {
                    let sk = ServiceKey {
                        namespace: v.key().0.clone(),
                        name: v.key().1.clone(),
                    };
                    let entry = st.table.entry(&sk).map(|(s, e)| (s.cloned(), e.clone()));
                    v.insert(entry.unwrap_or_default());
                }
            }
        }
        let mut conflicts: Vec<(Claim, Key)> = Vec::new();
        let mut plan = Plan::default();
        let mut new_classes: [BTreeSet<Class>; 2] = Default::default();
        let mut next: Vec<(Key, [Objects; 2])> = Vec::with_capacity(post.len());
        // Per backend address, how many more (or fewer) Services lead to it.
        let mut pins: BTreeMap<IpAddr, i64> = BTreeMap::new();
        for (key, (svc, eps)) in &post {
            let old = st.objects.get(key).unwrap_or(&empty);
            let new = Fam::ALL.map(|fam| {
                let i = fam as usize;
                let mut o = ruleset::desired(&self.settings, svc.as_ref(), eps, fam, Some(&old[i]));
                for c in ruleset::claims(&o, fam) {
                    let owner = match taken.get(&c) {
                        Some(o) => o.as_ref(),
                        None => st.claims.get(&c),
                    };
                    match owner {
                        Some(other) if other != key => {
                            ruleset::give_up(&mut o, &c);
                            conflicts.push((c, key.clone()));
                        }
                        _ => {
                            taken.insert(c, Some(key.clone()));
                        }
                    }
                }
                plan.diff(fam, &old[i], &o);
                for c in &o.classes {
                    if !st.classes[i].contains(c) && new_classes[i].insert(*c) {
                        plan.add_class(&self.settings, fam, c);
                    }
                }
                o
            });
            for ip in addresses(old) {
                *pins.entry(ip).or_default() -= 1;
            }
            for ip in addresses(&new) {
                *pins.entry(ip).or_default() += 1;
            }
            next.push((key.clone(), new));
        }
        pins.retain(|_, d| *d != 0);
        for (fam, (add, del)) in Fam::ALL.into_iter().zip(st.hairpin_changes(&pins)) {
            plan.hairpin(fam, add, del);
        }
        let host_ports = (req.full_sync
            || !req.host_port_upserts.is_empty()
            || !req.host_port_deletes.is_empty())
        .then(|| {
            let mut all = if req.full_sync {
                BTreeMap::new()
            } else {
                st.table.host_ports().clone()
            };
            apply_host_ports(&mut all, req);
            Fam::ALL.map(|fam| {
                let o = ruleset::host_port_objects(&all, fam);
                plan.diff(fam, &st.host_ports[fam as usize], &o);
                o
            })
        });
        let udp_gone = std::mem::take(&mut plan.udp_gone);
        let touched = plan.touched;
        st.conn.send(plan.into_batch()).map_err(nft_status)?;
        if let Some(h) = host_ports {
            st.host_ports = h;
        }
        st.commit_claims(taken, &post, conflicts);
        let services = post.len();
        // The table takes the Services as worked out above (no second copy of the batch).
        st.table.apply_resolved(req, post)?;
        st.commit_pins(pins);
        for (made, new) in st.classes.iter_mut().zip(new_classes) {
            made.extend(new);
        }
        for (key, objs) in next {
            if objs.iter().all(Objects::is_empty) {
                st.objects.remove(&key);
            } else {
                st.objects.insert(key, objs);
            }
        }
        drop(st);
        tracing::debug!(
            generation = req.generation,
            full_sync = req.full_sync,
            services,
            touched,
            "programmed"
        );
        if !udp_gone.is_empty() {
            match conntrack::flush_udp(&udp_gone) {
                Ok(n) => tracing::debug!(flows = n, "stale UDP flows flushed"),
                Err(e) => tracing::warn!(error = %e, "flushing stale UDP flows failed"),
            }
        }
        Ok(Applied::after(generation::Batch::from(req)))
    }
}

/// The backend addresses of one Service's objects, each once.
fn addresses(objs: &[Objects; 2]) -> BTreeSet<IpAddr> {
    objs.iter()
        .flat_map(|o| o.backends.iter().map(|(ip, _, _)| *ip))
        .collect()
}

/// Every Service the batch touches, as the batch leaves it (applied in ServiceTable's order:
/// full-sync clear, Service upserts, Service deletes, endpoint upserts, endpoint deletes).
fn after(st: &State, req: &ProgramServiceRequest) -> BTreeMap<Key, Entry> {
    let mut post: BTreeMap<Key, Entry> = BTreeMap::new();
    let base = |key: &Key| -> Entry {
        if req.full_sync {
            return Entry::default();
        }
        let sk = ServiceKey {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        st.table
            .entry(&sk)
            .map(|(s, e)| (s.cloned(), e.clone()))
            .unwrap_or_default()
    };
    for s in &req.service_upserts {
        if let Some(key) = &s.key {
            let key = k(key);
            let e = post.entry(key.clone()).or_insert_with(|| base(&key));
            e.0 = Some(s.clone());
        }
    }
    for key in &req.service_deletes {
        post.insert(k(key), Entry::default());
    }
    for u in &req.endpoint_upserts {
        if let (Some(key), Some(ep)) = (&u.service, &u.endpoint) {
            let key = k(key);
            post.entry(key.clone())
                .or_insert_with(|| base(&key))
                .1
                .insert(ep.address.clone(), ep.clone());
        }
    }
    for d in &req.endpoint_deletes {
        if let Some(key) = &d.service {
            let key = k(key);
            post.entry(key.clone())
                .or_insert_with(|| base(&key))
                .1
                .remove(&d.address);
        }
    }
    if req.full_sync {
        for key in st.objects.keys() {
            post.entry(key.clone()).or_default();
        }
    }
    post
}

/// Serves [`Nft`] over gRPC.
pub struct Api(pub std::sync::Arc<Nft>);

#[tonic::async_trait]
impl Services for Api {
    async fn program_service(
        &self,
        req: Request<ProgramServiceRequest>,
    ) -> Result<Response<ProgramServiceResponse>, Status> {
        let req = req.into_inner();
        let nft = self.0.clone();
        // Validation of a big batch and its netlink transaction block: they run on a blocking
        // thread, so Probe and health stay answered meanwhile; and to their end, even when the
        // host gives up on the call.
        let applied = tokio::task::spawn_blocking(move || {
            validate::program_service(&req)?;
            let whole = nft
                .parts
                .lock()
                .map_err(|_| Status::internal("parts lock poisoned"))?
                .offer(req)?;
            match whole {
                Some(req) => nft.program(&req),
                None => nft.applied(),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("programming task failed: {e}")))??;
        Ok(Response::new(ProgramServiceResponse::from(applied)))
    }

    async fn list_services(
        &self,
        req: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let req = req.into_inner();
        validate::list_services(&req)?;
        let nft = self.0.clone();
        // The state lock is held through a transaction: wait for it off the runtime thread.
        tokio::task::spawn_blocking(move || {
            nft.state
                .lock()
                .map(|st| Response::new(st.table.list(&req.namespace)))
                .map_err(|_| Status::internal("state lock poisoned"))
        })
        .await
        .map_err(|e| Status::internal(format!("listing task failed: {e}")))?
    }
}
