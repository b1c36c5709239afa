//! The console's database connections: a few, each used by one blocking task at a
//! time, so a slow export does not hold up a page and no query runs on the async
//! workers that serve the SIP side too.

use rusqlite::Connection;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct Db {
    free: Arc<Mutex<Vec<Connection>>>,
    slots: Arc<Semaphore>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database task failed")]
    Task,
}

impl Db {
    pub fn open(path: &Path, connections: usize) -> rusqlite::Result<Db> {
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            conns.push(crate::store::open(path)?);
        }
        Ok(Db {
            slots: Arc::new(Semaphore::new(conns.len())),
            free: Arc::new(Mutex::new(conns)),
        })
    }

    /// Runs `f` with a connection on the blocking pool.
    pub async fn run<T, E>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| E::from(DbError::Task))?;
        let free = self.free.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = free
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or(E::from(DbError::Task))?;
            let result = f(&mut conn);
            free.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|_| E::from(DbError::Task))?
    }
}
