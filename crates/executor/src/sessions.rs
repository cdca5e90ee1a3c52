//! Execution environments' credentials: minted for each new container, in the one place a
//! container's creation is asked of an agent ([`Executor::create_container`](crate::Executor)),
//! renewed while the container lives, revoked when it ends.
//!
//! The ends are revoked where the executor learns of them (a container destroyed, a VM retired
//! or stopped, a container gone on its own, an invocation that left its container unusable, a
//! failed creation, the function or version deleted, the server's start and stop); and on every
//! tick of the fleet's clock a sweep revokes the credential of any environment the pool no
//! longer holds, so an end a path forgot to report costs at most one tick. A credential younger
//! than its creation's bound is skipped by the sweep: its container may still be on its way into
//! the pool.

use std::time::Duration;

use ember_protocol::SessionCredentials;
use ember_store::{Function, SessionEnvironment};
use time::OffsetDateTime;
use tracing::debug;

use crate::{lock, Inner};

impl Inner {
    /// Mints the credentials of a container about to be created in `vm_id` for `function`.
    pub(crate) fn mint_session(
        &self,
        vm_id: &str,
        container_id: &str,
        function: &Function,
    ) -> SessionCredentials {
        let keys = self.store.mint_session(&SessionEnvironment {
            account_id: &function.account_id,
            function_name: &function.name,
            version: &function.version,
            vm_id,
            environment_id: container_id,
        });
        SessionCredentials {
            access_key_id: keys.access_key_id,
            secret_access_key: keys.secret_access_key,
            session_token: keys.session_token,
        }
    }

    /// A container ended (or was never made): its credentials are refused from now on.
    pub(crate) fn environment_ended(&self, container_id: &str) {
        if self.store.revoke_session_environment(container_id) > 0 {
            debug!(container_id, "session credentials revoked");
        }
    }

    /// A VM ended: the credentials of all its containers are refused from now on.
    pub(crate) fn vm_ended(&self, vm_id: &str) {
        let revoked = self.store.revoke_session_vm(vm_id);
        if revoked > 0 {
            debug!(vm_id, revoked, "session credentials of a VM revoked");
        }
    }

    /// Renews the credentials of living environments before they lapse, and revokes those of
    /// environments the pool no longer holds (created longer ago than a creation may take).
    pub(crate) fn sweep_sessions(&self) {
        let now = OffsetDateTime::now_utc();
        self.store.renew_sessions(now);
        let settled = now - creation_bound(self.config.agent_grace);
        let orphans: Vec<String> = {
            let mut fleet = lock(&self.fleet);
            let pool = fleet.pool();
            self.store
                .session_environments()
                .into_iter()
                .filter(|(id, created)| *created < settled && !pool.has_container(id))
                .map(|(id, _)| id)
                .collect()
        };
        for container_id in orphans {
            debug!(
                container_id,
                "revoking the credentials of an environment that is gone"
            );
            self.store.revoke_session_environment(&container_id);
        }
    }
}

/// How long after its credentials were minted a container may still be on its way into the
/// pool: its creation's timeout (the agent's grace), twice over.
fn creation_bound(agent_grace: Duration) -> time::Duration {
    time::Duration::try_from(agent_grace * 2).unwrap_or(time::Duration::MAX)
}
