//! Full syncs in parts: a sender splits a full sync larger than [`MAX_BATCH_BYTES`] into parts
//! (each `full_sync`, same epoch and generation, `full_sync_continues` on all but the last); a
//! receiver keeps the parts aside with [`Parts`] and applies them as one batch. grpc-go and
//! grpcio refuse messages over 4 MiB by default, so the host never sends one.

use prost::Message;

use crate::proto::{ApplyPolicyRequest, ProgramServiceRequest};

/// The largest batch a sender puts in one message: 4 MiB less room for the gRPC framing.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024 - 64 * 1024;

/// A batch that can be split into parts and put together again.
pub trait Splittable: Message + Clone + Default + Sized {
    /// The batch's (epoch, generation, full_sync, full_sync_continues).
    fn stamp(&self) -> (u64, u64, bool, bool);
    /// The batch's `full_sync_part`.
    fn part(&self) -> u32;
    /// Sets `full_sync_continues` and `full_sync_part`.
    fn set_part(&mut self, index: u32, continues: bool);
    /// An empty batch with the same stamp.
    fn empty_like(&self) -> Self;
    /// Moves the items of `self` into parts of at most `max` bytes each.
    fn split_items(self, max: usize) -> Vec<Self>;
    /// Appends the items of `other`.
    fn append(&mut self, other: Self);
}

/// Splits `req` into parts of at most `max` bytes when it is a full sync larger than that;
/// otherwise returns it alone. Deltas are never split (a sender keeps them small).
pub fn split<R: Splittable>(req: R, max: usize) -> Vec<R> {
    let (_, _, full, _) = req.stamp();
    if !full || req.encoded_len() <= max {
        return vec![req];
    }
    let mut parts = req.split_items(max);
    let last = parts.len().saturating_sub(1);
    for (i, p) in parts.iter_mut().enumerate() {
        p.set_part(i as u32, i != last);
    }
    parts
}

/// One item of a batch's repeated fields, as [`lazy_parts`] puts it into a part.
pub trait PartItem<R> {
    /// Its encoded length (without the field's tag and length prefix).
    fn encoded_len(&self) -> usize;
    /// Moves it into `part`'s field.
    fn put(self, part: &mut R);
}

/// The parts of a full sync, built one at a time as they are asked for: only the part being
/// sent exists, never the whole batch beside its parts (at 10k Services × 10 endpoints the
/// whole batch and its parts held about 90 MB at once). Each part at most `max` bytes (one
/// larger item goes alone); one part, numbered 0 and not continued, when everything fits, as
/// [`split`] leaves a small batch; one empty part when there is nothing.
pub struct LazyParts<R, I: Iterator> {
    template: R,
    empty: usize,
    items: std::iter::Peekable<I>,
    next: u32,
    max: usize,
}

/// The parts of the full sync stamped as `template` (its items ignored) holding `items`, at
/// most `max` bytes each.
pub fn lazy_parts<R, T, I>(template: &R, items: I, max: usize) -> LazyParts<R, I::IntoIter>
where
    R: Splittable,
    T: PartItem<R>,
    I: IntoIterator<Item = T>,
{
    // Sized with the highest part index, as `split_items` does.
    let mut sized = template.empty_like();
    sized.set_part(u32::MAX, true);
    LazyParts {
        empty: sized.encoded_len(),
        template: template.empty_like(),
        items: items.into_iter().peekable(),
        next: 0,
        max,
    }
}

impl<R, T, I> Iterator for LazyParts<R, I>
where
    R: Splittable,
    T: PartItem<R>,
    I: Iterator<Item = T>,
{
    type Item = R;

    fn next(&mut self) -> Option<R> {
        if self.next > 0 && self.items.peek().is_none() {
            return None;
        }
        let mut part = self.template.empty_like();
        let mut len = self.empty;
        while let Some(item) = self.items.peek() {
            // An item costs its length, a tag and a length prefix (at most 6 bytes).
            let cost = item.encoded_len() + 6;
            if len + cost > self.max && len > self.empty {
                break;
            }
            if let Some(item) = self.items.next() {
                item.put(&mut part);
            }
            len += cost;
        }
        let continues = self.items.peek().is_some();
        part.set_part(self.next, continues);
        self.next += 1;
        Some(part)
    }
}

/// Parts being filled, with the encoded size of the last one kept as it grows (measuring the
/// whole part again per item would be quadratic).
pub(crate) struct Filling<R> {
    pub(crate) parts: Vec<R>,
    last_len: usize,
    template: R,
    max: usize,
}

impl<R: Splittable> Filling<R> {
    pub(crate) fn new(template: R, max: usize) -> Self {
        Self {
            last_len: template.encoded_len(),
            parts: vec![template.clone()],
            template,
            max,
        }
    }

    /// Moves the items of one repeated field into the parts, starting a new part whenever the
    /// current one would pass `max` bytes.
    pub(crate) fn fill<T: Message>(&mut self, from: Vec<T>, field: fn(&mut R) -> &mut Vec<T>) {
        let empty = self.template.encoded_len();
        for item in from {
            // An item costs its length, a tag and a length prefix (at most 6 bytes).
            let cost = item.encoded_len() + 6;
            if self.last_len + cost > self.max && self.last_len > empty {
                self.parts.push(self.template.empty_like());
                self.last_len = empty;
            }
            if let Some(p) = self.parts.last_mut() {
                field(p).push(item);
                self.last_len += cost;
            }
        }
    }
}

/// The stamp accessors, the same for every batch type (their fields share names).
macro_rules! stamped {
    () => {
        fn stamp(&self) -> (u64, u64, bool, bool) {
            (
                self.epoch,
                self.generation,
                self.full_sync,
                self.full_sync_continues,
            )
        }
        fn part(&self) -> u32 {
            self.full_sync_part
        }
        fn set_part(&mut self, index: u32, continues: bool) {
            self.full_sync_part = index;
            self.full_sync_continues = continues;
        }
        fn empty_like(&self) -> Self {
            Self {
                epoch: self.epoch,
                generation: self.generation,
                full_sync: self.full_sync,
                ..Default::default()
            }
        }
    };
}
pub(crate) use stamped;

impl Splittable for ProgramServiceRequest {
    stamped!();
    fn split_items(self, max: usize) -> Vec<Self> {
        // The template carries the highest part index so sizes account for it.
        let mut template = self.empty_like();
        template.set_part(u32::MAX, true);
        let mut f = Filling::new(template, max);
        f.fill(self.service_upserts, |r| &mut r.service_upserts);
        f.fill(self.endpoint_upserts, |r| &mut r.endpoint_upserts);
        f.fill(self.host_port_upserts, |r| &mut r.host_port_upserts);
        f.fill(self.service_deletes, |r| &mut r.service_deletes);
        f.fill(self.endpoint_deletes, |r| &mut r.endpoint_deletes);
        f.fill(self.host_port_deletes, |r| &mut r.host_port_deletes);
        f.parts
    }
    fn append(&mut self, o: Self) {
        self.service_upserts.extend(o.service_upserts);
        self.service_deletes.extend(o.service_deletes);
        self.endpoint_upserts.extend(o.endpoint_upserts);
        self.endpoint_deletes.extend(o.endpoint_deletes);
        self.host_port_upserts.extend(o.host_port_upserts);
        self.host_port_deletes.extend(o.host_port_deletes);
    }
}

impl Splittable for ApplyPolicyRequest {
    stamped!();
    fn split_items(self, max: usize) -> Vec<Self> {
        let mut template = self.empty_like();
        template.set_part(u32::MAX, true);
        let mut f = Filling::new(template, max);
        f.fill(self.network_policies, |r| &mut r.network_policies);
        f.fill(self.dns_policies, |r| &mut r.dns_policies);
        f.fill(self.hostname_grants, |r| &mut r.hostname_grants);
        f.fill(self.deletes, |r| &mut r.deletes);
        f.parts
    }
    fn append(&mut self, o: Self) {
        self.network_policies.extend(o.network_policies);
        self.dns_policies.extend(o.dns_policies);
        self.hostname_grants.extend(o.hostname_grants);
        self.deletes.extend(o.deletes);
    }
}

/// A receiver's parts of a full sync kept aside until the last arrives.
#[derive(Debug, Default)]
pub struct Parts<R> {
    kept: Option<R>,
    count: u32,
}

impl<R: Splittable> Parts<R> {
    /// As [`Parts::offer`] for a borrowed batch: one sent whole comes back borrowed (no copy on
    /// the common path), a part is copied and kept.
    pub fn take<'a>(
        &mut self,
        req: &'a R,
    ) -> Result<Option<std::borrow::Cow<'a, R>>, tonic::Status> {
        let (_, _, full, continues) = req.stamp();
        if self.kept.is_some() || (full && (continues || req.part() > 0)) {
            return Ok(self.offer(req.clone())?.map(std::borrow::Cow::Owned));
        }
        // Nothing kept and not a part: exactly what `offer` would hand back.
        Ok(Some(std::borrow::Cow::Borrowed(req)))
    }

    /// Takes a (validated) batch: `Ok(Some(batch))` to check and apply now (a batch sent whole,
    /// or the last part with the others put together), `Ok(None)` when it is a part to keep
    /// (answer OK with the generation applied before), or `FAILED_PRECONDITION` naming
    /// `full_sync_part` when parts are missing. A batch with another epoch or generation than
    /// the parts kept drops them.
    pub fn offer(&mut self, req: R) -> Result<Option<R>, tonic::Status> {
        let (epoch, generation, full, continues) = req.stamp();
        let same = self.kept.as_ref().is_some_and(|k| {
            let (e, g, _, _) = k.stamp();
            (e, g) == (epoch, generation)
        });
        if !same {
            self.kept = None;
            self.count = 0;
        }
        let index = if full { req.part() } else { 0 };
        if index != self.count {
            let kept = self.count;
            self.kept = None;
            self.count = 0;
            return Err(crate::validate::field_error(
                tonic::Code::FailedPrecondition,
                "full_sync_part",
                format!(
                    "part {index} of the full sync of generation {generation} follows {kept} parts kept; send the full sync again"
                ),
                "FULL_SYNC_PART_MISSING",
            ));
        }
        if full && continues {
            match self.kept.as_mut() {
                Some(k) => k.append(req),
                None => self.kept = Some(req),
            }
            self.count += 1;
            return Ok(None);
        }
        self.count = 0;
        Ok(Some(match self.kept.take() {
            Some(mut k) => {
                k.append(req);
                k.set_part(0, false);
                k
            }
            None => req,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Endpoint, EndpointUpsert, Service, ServiceKey};
    use crate::state::ServiceTable;

    fn big(services: usize, endpoints: usize) -> ProgramServiceRequest {
        let mut r = ProgramServiceRequest {
            epoch: 3,
            generation: 9,
            full_sync: true,
            ..Default::default()
        };
        for s in 0..services {
            let key = ServiceKey {
                namespace: format!("ns{}", s % 7),
                name: format!("svc-{s}"),
            };
            r.service_upserts.push(Service {
                key: Some(key.clone()),
                cluster_ips: vec![format!("10.96.{}.{}", s / 250, s % 250 + 1)],
                ..Default::default()
            });
            for e in 0..endpoints {
                r.endpoint_upserts.push(EndpointUpsert {
                    service: Some(key.clone()),
                    endpoint: Some(Endpoint {
                        address: format!("10.{}.{}.{}", 1 + s / 250, s % 250, e + 1),
                        ready: true,
                        ..Default::default()
                    }),
                });
            }
        }
        r
    }

    /// Checks `parts` are several parts of generation 9 of epoch 3 under the limit, numbered
    /// in order, continued but the last, and returns what a receiver puts together of them
    /// (nothing applies before the last).
    fn received(parts: Vec<ProgramServiceRequest>) -> ProgramServiceRequest {
        assert!(parts.len() > 1);
        for (i, p) in parts.iter().enumerate() {
            assert!(p.encoded_len() <= MAX_BATCH_BYTES, "part {i}");
            assert_eq!(
                (p.epoch, p.generation, p.full_sync),
                (3, 9, true),
                "part {i}"
            );
            assert_eq!(p.full_sync_continues, i + 1 < parts.len(), "part {i}");
            assert_eq!(p.full_sync_part, i as u32);
        }
        let mut kept = Parts::default();
        let mut out = None;
        for p in parts {
            assert!(out.is_none(), "nothing applies before the last part");
            out = kept.offer(p).unwrap();
        }
        out.unwrap()
    }

    #[test]
    fn a_large_full_sync_goes_in_parts_under_the_limit_and_applies_as_one() {
        let whole = big(6000, 30);
        assert!(
            whole.encoded_len() > 4 * 1024 * 1024,
            "the test needs a large sync"
        );
        let out = received(split(whole.clone(), MAX_BATCH_BYTES));
        let (mut a, mut b) = (ServiceTable::default(), ServiceTable::default());
        a.apply(&whole).unwrap();
        b.apply(&out).unwrap();
        assert_eq!(a.list(""), b.list(""));
        // Small batches and deltas go as they are.
        let small = big(2, 2);
        assert_eq!(split(small.clone(), MAX_BATCH_BYTES), vec![small]);
    }

    #[test]
    fn a_table_sent_in_lazy_parts_arrives_as_its_full_sync() {
        let whole = big(6000, 30);
        let mut table = ServiceTable::default();
        table.apply(&whole).unwrap();
        // Put together by a receiver, they are the table's full sync item for item.
        let mut out = received(table.full_sync_parts(MAX_BATCH_BYTES).collect());
        out.set_part(0, false);
        assert_eq!(out, table.full_sync_request());
        // A small table goes in one part, numbered 0 and not continued: the full sync itself;
        // an empty one as one empty full sync.
        let mut small = ServiceTable::default();
        small.apply(&big(2, 2)).unwrap();
        let one: Vec<_> = small.full_sync_parts(MAX_BATCH_BYTES).collect();
        assert_eq!(one, vec![small.full_sync_request()]);
        let none: Vec<_> = ServiceTable::default()
            .full_sync_parts(MAX_BATCH_BYTES)
            .collect();
        assert_eq!(none, vec![ServiceTable::default().full_sync_request()]);
    }

    #[test]
    fn another_generation_drops_the_parts_kept_and_a_gap_is_refused() {
        let parts = split(big(2000, 20), 512 * 1024);
        assert!(parts.len() >= 3);
        let mut kept = Parts::default();
        assert_eq!(kept.offer(parts[0].clone()).unwrap(), None);
        let other = ProgramServiceRequest {
            epoch: 4,
            generation: 1,
            full_sync: true,
            ..Default::default()
        };
        assert_eq!(kept.offer(other.clone()).unwrap(), Some(other));
        // The later parts alone, the first lost: refused, never applied as if whole.
        let e = kept.offer(parts[1].clone()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().starts_with("full_sync_part:"), "{e:?}");
        let last = parts.last().cloned().unwrap();
        assert!(kept.offer(last).is_err());
        // A part skipped in the middle: refused too.
        assert_eq!(kept.offer(parts[0].clone()).unwrap(), None);
        assert!(kept.offer(parts[2].clone()).is_err());
    }
}
