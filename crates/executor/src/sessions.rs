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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use bytes::Bytes;
    use ember_protocol::{Request, SessionCredentials};

    use crate::testing::{config, script, until, Answer, Harness};
    use crate::InvokeRequest;

    fn request(function: &ember_store::Function) -> InvokeRequest {
        InvokeRequest {
            function: function.clone(),
            qualifier: None,
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: Bytes::from_static(b"{}"),
            client_context: None,
            cognito_identity: None,
        }
    }

    /// The credentials each container was created with, and its id.
    fn minted(h: &Harness) -> Vec<(String, SessionCredentials)> {
        h.driver
            .seen()
            .created
            .iter()
            .map(|(_, c)| (c.container_id.clone(), c.credentials.clone().unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn each_container_is_created_with_credentials_of_its_own_in_force_while_it_lives() {
        let h = Harness::start(config(2, 1024), script(|_| None)).await;
        let f = h.function("a", 128).await;
        let g = h.function_in(&f.account_id, "g", 128).await;
        h.executor.invoke(request(&f)).await.unwrap();
        h.executor.invoke(request(&g)).await.unwrap();
        let minted = minted(&h);
        assert_eq!(minted.len(), 2);
        assert_ne!(minted[0].1, minted[1].1);
        for ((container, keys), function) in minted.iter().zip([&f, &g]) {
            let session = h.store.session(&keys.access_key_id).unwrap();
            assert_eq!(&session.environment_id, container);
            assert_eq!(session.account_id, function.account_id);
            assert_eq!(session.function_name, function.name);
            assert!(session.token_matches(&keys.session_token));
        }
        // A warm invocation mints nothing.
        h.executor.invoke(request(&f)).await.unwrap();
        assert_eq!(h.driver.seen().created.len(), 2);

        // The function deleted: its environment's credentials go at once, the other's stay.
        h.executor.function_changed(&f.account_id, &f.name, None);
        assert!(h.store.session(&minted[0].1.access_key_id).is_none());
        assert!(h.store.session(&minted[1].1.access_key_id).is_some());

        // The VM dies: every credential of its containers goes.
        let vm = h.driver.seen().created[1].0.clone();
        h.driver.kill_agent(&vm);
        until("the VM's credentials are revoked", || {
            h.store.session(&minted[1].1.access_key_id).is_none()
        })
        .await;
    }

    #[tokio::test]
    async fn a_container_not_created_leaves_no_credential_in_force() {
        let refused = Arc::new(AtomicBool::new(false));
        let once = refused.clone();
        let h = Harness::start(
            config(2, 1024),
            script(move |r| match r {
                Request::CreateContainer(_) if !once.swap(true, Ordering::SeqCst) => {
                    Some(Answer::Refuse("no".into()))
                }
                _ => None,
            }),
        )
        .await;
        let f = h.function("a", 128).await;
        assert!(h.executor.invoke(request(&f)).await.is_err());
        let minted = minted(&h);
        assert_eq!(minted.len(), 1);
        assert!(h.store.session(&minted[0].1.access_key_id).is_none());
        assert!(h.store.session_environments().is_empty());
    }

    #[tokio::test]
    async fn the_sweep_revokes_environments_the_pool_no_longer_holds() {
        let mut config = config(2, 1024);
        config.agent_grace = std::time::Duration::from_millis(100);
        let h = Harness::start(config, script(|_| None)).await;
        let f = h.function("a", 128).await;
        h.executor.invoke(request(&f)).await.unwrap();
        // A credential whose environment the pool never had (a path that forgot to revoke).
        let stray = h.store.mint_session(&ember_store::SessionEnvironment {
            account_id: &f.account_id,
            function_name: &f.name,
            version: &f.version,
            vm_id: "vm-gone",
            environment_id: "c-gone",
        });
        until("the stray credential is swept", || {
            h.store.session(&stray.access_key_id).is_none()
        })
        .await;
        let (_, live) = &minted(&h)[0];
        assert!(h.store.session(&live.access_key_id).is_some());
    }
}
