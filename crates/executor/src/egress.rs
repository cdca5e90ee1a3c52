//! A function's egress in its execution environments: its own setting over the server's
//! `--egress`, carried in each new container's `CreateContainer::egress` and in the fleet's key,
//! so that an environment made under one setting never serves an execution under another; and
//! what a change of the setting does to the environments already there.

use std::time::Instant;

use ember_protocol::Egress;
use ember_store::{Function, FunctionEgress};
use tracing::debug;

use crate::provisioned::pin;
use crate::{lock, Executor, Expired};

impl Executor {
    /// The egress of `function`'s new environments: its own, else the server's default.
    pub fn egress_of(&self, function: &Function) -> Egress {
        match function.egress {
            Some(FunctionEgress::Allow) => Egress::Allow,
            Some(FunctionEgress::Deny) => Egress::Deny,
            None => self.inner.config.egress,
        }
    }

    /// A function's own egress was set to `egress` (already stored; `before` is the function
    /// as it was). When that changes the egress its environments get, its idle environments,
    /// of every version, are destroyed now; busy ones finish their invocations and are never
    /// reused (the fleet's key holds the setting they were made under), so every new
    /// invocation gets an environment under the new setting; provisioned environments are
    /// replaced by ones under the new setting. Otherwise nothing is retired.
    pub fn egress_changed(&self, before: &Function, egress: Option<FunctionEgress>) {
        let (account_id, function_name) = (before.account_id.as_str(), before.name.as_str());
        let after = Function {
            egress,
            ..before.clone()
        };
        let changed = self.egress_of(before) != self.egress_of(&after);
        let now = Instant::now();
        let prefix = pin(account_id, function_name, "");
        let replaced: Vec<String> = lock(&self.inner.provisioned.0)
            .iter_mut()
            .filter(|(pin, f)| pin.starts_with(&prefix) && f.egress != egress)
            .filter_map(|(pin, f)| {
                // The targets' versions read the setting from here; their environments are
                // replaced only if what they get changes.
                f.egress = egress;
                changed.then(|| pin.clone())
            })
            .collect();
        if !changed {
            return;
        }
        let mut gone = Expired::default();
        {
            let mut fleet = lock(&self.inner.fleet);
            for pin in &replaced {
                let requested = fleet.provisioned(pin).map_or(0, |view| view.requested);
                let expired = fleet.unprovision(pin, now);
                gone.containers.extend(expired.containers);
                gone.vms.extend(expired.vms);
                fleet.provision(pin, requested);
            }
            let idle = fleet
                .pool()
                .take_stale_idle(account_id, function_name, None, None, now);
            gone.containers.extend(idle);
        }
        debug!(
            account_id,
            function_name,
            ?egress,
            retired = gone.containers.len(),
            provisioned = replaced.len(),
            "egress changed: environments retired"
        );
        if !gone.is_empty() {
            self.inner.freed.notify_waiters();
            self.inner.destroy(gone);
        }
        if !replaced.is_empty() {
            self.inner.provision();
        }
    }
}

#[cfg(test)]
mod tests;
