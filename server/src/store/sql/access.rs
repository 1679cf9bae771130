//! Tokens and the audit log in SQL (tables `tokens` and `audit`, migration 0005): the
//! [`AccessStore`] of a [`SqlStore`]. Times are RFC 3339 text in UTC, as everywhere in the
//! store, so they compare as strings.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{parse_time, timestamp, OrStoreError, SqlStore};
use crate::auth::{AccessError, AccessStore, AuditEntry, AuditQuery, AuditRecord, NewToken, Role, TokenRecord};

const TOKEN_COLUMNS: &str = "name, role, namespace, created_at, expires_at, last_used_at, revoked_at";
const AUDIT_COLUMNS: &str = "id, time, request_id, principal, verb, resource, namespace, name, code, message";

fn token_from_row(row: &AnyRow) -> Result<TokenRecord, AccessError> {
    let time = |index: usize| -> Result<Option<DateTime<Utc>>, AccessError> {
        Ok(row.try_get::<Option<String>, _>(index).db()?.map(|text| parse_time(&text)))
    };
    let role: String = row.try_get(1).db()?;
    Ok(TokenRecord {
        name: row.try_get(0).db()?,
        role: serde_json::from_value::<Role>(serde_json::Value::String(role))
            .map_err(crate::store::StoreError::from)?,
        namespace: row.try_get(2).db()?,
        created_at: parse_time(&row.try_get::<String, _>(3).db()?),
        expires_at: time(4)?,
        last_used_at: time(5)?,
        revoked_at: time(6)?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<AuditRecord, AccessError> {
    let code: i64 = row.try_get(8).db()?;
    Ok(AuditRecord {
        id: row.try_get(0).db()?,
        entry: AuditEntry {
            time: parse_time(&row.try_get::<String, _>(1).db()?),
            request_id: row.try_get(2).db()?,
            principal: row.try_get(3).db()?,
            verb: row.try_get(4).db()?,
            resource: row.try_get(5).db()?,
            namespace: row.try_get(6).db()?,
            name: row.try_get(7).db()?,
            code: u16::try_from(code).unwrap_or(0),
            message: row.try_get(9).db()?,
        },
    })
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn create_token(&self, token: &NewToken, hash: &str) -> Result<TokenRecord, AccessError> {
        let _guard = self.write_lock.lock().await;
        let mut transaction = self.write_pool.begin().await.db()?;
        sqlx::query("DELETE FROM tokens WHERE name = $1 AND revoked_at IS NOT NULL")
            .bind(&token.name)
            .execute(&mut *transaction)
            .await
            .db()?;
        let inserted = sqlx::query(
            "INSERT INTO tokens (name, hash, role, namespace, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(&token.name)
        .bind(hash)
        .bind(token.role.as_str())
        .bind(token.namespace.as_deref())
        .bind(timestamp(Utc::now()))
        .bind(token.expires_at.map(timestamp))
        .execute(&mut *transaction)
        .await
        .db()?;
        if inserted.rows_affected() == 0 {
            return Err(AccessError::AlreadyExists(token.name.clone()));
        }
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = $1"))
            .bind(&token.name)
            .fetch_one(&mut *transaction)
            .await
            .db()?;
        let record = token_from_row(&row)?;
        transaction.commit().await.db()?;
        Ok(record)
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, AccessError> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_tokens(&self, namespace: Option<&str>) -> Result<Vec<TokenRecord>, AccessError> {
        let rows = match namespace {
            Some(namespace) => {
                sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE namespace = $1 ORDER BY name"))
                    .bind(namespace)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY name")).fetch_all(&self.pool).await
            }
        }
        .db()?;
        rows.iter().map(token_from_row).collect()
    }

    async fn token(&self, name: &str) -> Result<Option<TokenRecord>, AccessError> {
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .db()?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn revoke_token(&self, name: &str) -> Result<TokenRecord, AccessError> {
        let _guard = self.write_lock.lock().await;
        let mut transaction = self.write_pool.begin().await.db()?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL")
            .bind(timestamp(Utc::now()))
            .bind(name)
            .execute(&mut *transaction)
            .await
            .db()?;
        let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name = $1"))
            .bind(name)
            .fetch_optional(&mut *transaction)
            .await
            .db()?;
        let record =
            row.as_ref().map(token_from_row).transpose()?.ok_or_else(|| AccessError::NotFound(name.to_owned()))?;
        transaction.commit().await.db()?;
        Ok(record)
    }

    async fn touch_token(&self, name: &str, time: DateTime<Utc>) -> Result<(), AccessError> {
        let _guard = self.write_lock.lock().await;
        sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE name = $2")
            .bind(timestamp(time))
            .bind(name)
            .execute(&self.write_pool)
            .await
            .db()?;
        Ok(())
    }

    async fn count_active_tokens(&self) -> Result<u64, AccessError> {
        let count: i64 = sqlx::query(
            "SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(timestamp(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .db()?
        .try_get(0)
        .db()?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn record_audit(&self, entries: &[AuditEntry]) -> Result<(), AccessError> {
        let _guard = self.write_lock.lock().await;
        let mut transaction = self.write_pool.begin().await.db()?;
        for entry in entries {
            sqlx::query(
                "INSERT INTO audit (time, request_id, principal, verb, resource, namespace, name, code, message) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(timestamp(entry.time))
            .bind(&entry.request_id)
            .bind(&entry.principal)
            .bind(&entry.verb)
            .bind(&entry.resource)
            .bind(entry.namespace.as_deref())
            .bind(entry.name.as_deref())
            .bind(i64::from(entry.code))
            .bind(&entry.message)
            .execute(&mut *transaction)
            .await
            .db()?;
        }
        transaction.commit().await.db()?;
        Ok(())
    }

    async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, AccessError> {
        // The newest `limit` entries that match, read newest first and returned oldest first.
        let since = query.since.map(timestamp).unwrap_or_default();
        let limit = i64::try_from(query.limit.max(1)).unwrap_or(i64::MAX);
        let rows = match &query.namespace {
            Some(namespace) => sqlx::query(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit WHERE time >= $1 AND namespace = $2 ORDER BY id DESC LIMIT $3"
            ))
            .bind(since)
            .bind(namespace)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .db()?,
            None => {
                sqlx::query(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE time >= $1 ORDER BY id DESC LIMIT $2"))
                    .bind(since)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .db()?
            }
        };
        let mut records = rows.iter().map(audit_from_row).collect::<Result<Vec<_>, _>>()?;
        records.reverse();
        Ok(records)
    }

    async fn audit_head(&self) -> Result<i64, AccessError> {
        let head: i64 =
            sqlx::query("SELECT COALESCE(MAX(id), 0) FROM audit").fetch_one(&self.pool).await.db()?.try_get(0).db()?;
        Ok(head)
    }

    async fn prune_audit(&self, older_than: DateTime<Utc>, keep: usize) -> Result<u64, AccessError> {
        let _guard = self.write_lock.lock().await;
        let pruned = sqlx::query(
            "DELETE FROM audit WHERE time < $1 OR id <= (SELECT id FROM audit ORDER BY id DESC LIMIT 1 OFFSET $2)",
        )
        .bind(timestamp(older_than))
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .execute(&self.write_pool)
        .await
        .db()?;
        Ok(pruned.rows_affected())
    }
}
