//! Running crafted packets through an endpoint's program and reading which reason the program
//! counted: the verdict a packet-level test asserts.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, Result, bail};
use genie_agent::dataplane::{
    Dataplane, FROM_ENDPOINT_PROGRAM, TO_ENDPOINT_PROGRAM, read_counters,
};
use genie_common::{CounterValue, Direction, Reason};

use crate::packet::{TC_ACT_NEXT, TC_ACT_SHOT, run_tc};

/// Runs frames through the programs of a loaded dataplane.
#[derive(Debug)]
pub struct Probe<'a> {
    pub dataplane: &'a Dataplane,
    pub netns: PathBuf,
    pub bpffs: PathBuf,
}

impl Probe<'_> {
    fn counters(&self) -> Result<BTreeMap<(u32, u8, u8), CounterValue>> {
        let mut sums: BTreeMap<(u32, u8, u8), CounterValue> = BTreeMap::new();
        for r in read_counters(&self.bpffs)? {
            let slot = sums
                .entry((r.endpoint_id, r.direction as u8, r.reason as u8))
                .or_default();
            *slot = slot.add(r.value);
        }
        Ok(sums)
    }

    /// Runs `frame` once through the program for `direction` as if it crossed the interface
    /// `ifindex`, and returns the reason the program counted. The return code must agree with
    /// the reason (forwarded ⇔ TC_ACT_NEXT).
    pub fn verdict(&self, ifindex: u32, direction: Direction, frame: &[u8]) -> Result<Reason> {
        let program = self.dataplane.program(match direction {
            Direction::Egress => FROM_ENDPOINT_PROGRAM,
            Direction::Ingress => TO_ENDPOINT_PROGRAM,
        })?;
        let before = self.counters()?;
        let result = run_tc(program, &self.netns, ifindex, frame, 1)?;
        let after = self.counters()?;
        let mut counted = after
            .iter()
            .filter(|(k, v)| {
                k.1 == direction as u8 && before.get(k).map_or(0, |b| b.packets) + 1 == v.packets
            })
            .map(|(k, _)| Reason::from_u8(k.2).context("unknown reason"));
        let reason = counted.next().context("the program counted nothing")??;
        if counted.next().is_some() {
            bail!("the program counted one packet twice");
        }
        let expected_code = if reason.is_drop() {
            TC_ACT_SHOT
        } else {
            TC_ACT_NEXT
        };
        if result.return_value != expected_code {
            bail!(
                "return code {} disagrees with counted reason {reason:?}",
                result.return_value
            );
        }
        Ok(reason)
    }
}
