//! Function reads through the cache (`cache.rs`), with refresh-ahead on a store several servers
//! share: a cached function past half its maximum age is answered at once and fetched again in
//! the background, so that a function invoked steadily never waits for PostgreSQL on the
//! Invoke path (issue 20's warm-path target) when the safety net under the notifications
//! (`notify.rs`) lapses, while no entry is answered once older than [`crate::SHARED_MAX_AGE`].
//! Only a function not read for that long (or never) is fetched on the caller's path.

use std::time::Instant;

use crate::cache::Lookup;
use crate::{fetch_function, Function, Result, Store, LATEST};

impl Store {
    /// Function `name` at `version` (`$LATEST` or a published version's number) of an account,
    /// from the cache when it may answer, else from the database (and cached).
    pub(crate) async fn cached_function(
        &self,
        account_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<Function>> {
        match self.cache.function(account_id, name, version) {
            Lookup::Fresh(function) => Ok(Some(function)),
            Lookup::Stale { function, refresh } => {
                if refresh {
                    self.refresh_in_background(account_id, name, version);
                }
                Ok(Some(function))
            }
            Lookup::Miss => self.fetch_and_cache(account_id, name, version).await,
        }
    }

    /// Reads the function from the database and caches what it found, unless a write of the
    /// function happened meanwhile (the generation check).
    async fn fetch_and_cache(
        &self,
        account_id: &str,
        name: &str,
        version: &str,
    ) -> Result<Option<Function>> {
        let generation = self.cache.generation();
        let began = Instant::now();
        let found = if version == LATEST {
            fetch_function(&self.pool, account_id, name).await?
        } else {
            self.fetch_version(account_id, name, version).await?
        };
        if let Some(function) = &found {
            self.cache.put_function(generation, began, function);
        }
        Ok(found)
    }

    /// Fetches the function again on a task of its own. A function deleted meanwhile (on
    /// another server) is forgotten; a failed read is only logged: the entry then lapses at the
    /// maximum age and the next read fetches it on its own path, and fails there if the
    /// database is still away.
    fn refresh_in_background(&self, account_id: &str, name: &str, version: &str) {
        let key = (account_id.to_owned(), name.to_owned(), version.to_owned());
        // Store reads run on tokio; outside a runtime there is nothing to spawn on, and the
        // entry simply lapses.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.cache.refreshed(&key.0, &key.1, &key.2);
            return;
        };
        let store = self.clone();
        runtime.spawn(async move {
            let (account_id, name, version) = (&key.0, &key.1, &key.2);
            match store.fetch_and_cache(account_id, name, version).await {
                Ok(Some(_)) => {}
                Ok(None) => store.cache.invalidate_function(account_id, name),
                Err(e) => tracing::debug!(
                    function = %name,
                    error = %crate::blob::chain(&e),
                    "cannot refresh a cached function"
                ),
            }
            store.cache.refreshed(account_id, name, version);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cache::{Cache, Lookup};
    use crate::Function;

    fn function(version: &str, description: &str) -> Function {
        let mut spec = crate::tests::spec();
        spec.description = description.to_owned();
        Function {
            account_id: "a".into(),
            name: "f".into(),
            version: version.to_owned(),
            spec,
            code_sha256: String::new(),
            code_size: 0,
            revision_id: "r".into(),
            last_modified: time::OffsetDateTime::UNIX_EPOCH,
            reserved_concurrency: None,
            egress: None,
        }
    }

    #[test]
    fn a_shared_stores_entry_is_fresh_then_stale_with_one_refresher_then_gone() {
        let max_age = Duration::from_millis(200);
        let cache = Cache::expiring(max_age);
        let began = std::time::Instant::now();
        cache.put_function(cache.generation(), began, &function("$LATEST", "one"));
        assert!(
            matches!(cache.function("a", "f", "$LATEST"), Lookup::Fresh(f) if f.spec.description == "one")
        );
        assert!(matches!(cache.function("a", "f", "1"), Lookup::Miss));
        std::thread::sleep(max_age / 2);
        // Stale: answered, and exactly one caller is told to refresh until it is done.
        assert!(matches!(
            cache.function("a", "f", "$LATEST"),
            Lookup::Stale { ref function, refresh: true } if function.spec.description == "one"
        ));
        assert!(matches!(
            cache.function("a", "f", "$LATEST"),
            Lookup::Stale { refresh: false, .. }
        ));
        // The refresh's read began now: the entry is fresh again, and the next stale read may
        // refresh it again.
        cache.put_function(
            cache.generation(),
            std::time::Instant::now(),
            &function("$LATEST", "two"),
        );
        cache.refreshed("a", "f", "$LATEST");
        assert!(
            matches!(cache.function("a", "f", "$LATEST"), Lookup::Fresh(f) if f.spec.description == "two")
        );
        // Never answered once the read that fetched it began max_age ago.
        std::thread::sleep(max_age);
        assert!(matches!(cache.function("a", "f", "$LATEST"), Lookup::Miss));
    }

    #[test]
    fn a_refresh_that_raced_a_write_is_not_cached_and_one_server_never_goes_stale() {
        let cache = Cache::expiring(Duration::from_secs(60));
        let generation = cache.generation();
        cache.invalidate_function("a", "f");
        cache.put_function(
            generation,
            std::time::Instant::now(),
            &function("$LATEST", "old"),
        );
        assert!(matches!(cache.function("a", "f", "$LATEST"), Lookup::Miss));

        let single = Cache::default();
        let long_ago = std::time::Instant::now() - Duration::from_secs(3600);
        single.put_function(single.generation(), long_ago, &function("$LATEST", "x"));
        assert!(matches!(
            single.function("a", "f", "$LATEST"),
            Lookup::Fresh(_)
        ));
    }
}
