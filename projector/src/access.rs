//! The `access` projection: the users and members read models behind `/api/users` and
//! `/api/organizations/{id}/members`. Member rows carry their user's email and name; a profile update
//! rewrites them, and erasing the user deletes its rows.
//!
//! Users and memberships change rarely next to everything else in the log, so events are applied one
//! statement each rather than folded per batch as `tenants` does.

use async_trait::async_trait;
use contracts::read_models::ACCESS;
use domain::members::{Members, MembersEvent};
use domain::organization::{Organization, OrganizationEvent};
use domain::user::{User, UserEvent};
use domain::{Aggregate, RecordedEvent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::Projection;

pub struct Access;

#[async_trait]
impl Projection for Access {
    fn name(&self) -> &'static str {
        ACCESS
    }

    fn tables(&self) -> &'static [&'static str] {
        &["users", "members"]
    }

    fn handles(&self, stream_type: &str) -> bool {
        matches!(stream_type, User::TYPE | Members::TYPE | Organization::TYPE)
    }

    async fn apply(&self, conn: &mut PgConnection, events: &[RecordedEvent]) -> anyhow::Result<()> {
        for event in events {
            let Some((kind, id)) = event.stream_id.split_once('-') else {
                continue;
            };
            match kind {
                User::TYPE => apply_user(conn, id.parse()?, event).await?,
                Members::TYPE => apply_members(conn, id.parse()?, event).await?,
                Organization::TYPE => {
                    if let OrganizationEvent::Deleted {} = event.decode()? {
                        sqlx::query("DELETE FROM members WHERE organization_id = $1")
                            .bind(id.parse::<Uuid>()?)
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

async fn apply_user(
    conn: &mut PgConnection,
    id: Uuid,
    event: &RecordedEvent,
) -> anyhow::Result<()> {
    let at = event.recorded_at;
    let version = event.stream_version;
    match event.decode::<UserEvent>()? {
        UserEvent::Registered { email, name, .. } => {
            sqlx::query(
                "INSERT INTO users (id, email, name, system_role, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, false, $4, $5, $5) ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(email)
            .bind(name)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::ProfileUpdated { email, name } => {
            sqlx::query(
                "UPDATE users SET email = COALESCE($2, email), name = COALESCE($3, name), \
                 version = $4, updated_at = $5 WHERE id = $1",
            )
            .bind(id)
            .bind(&email)
            .bind(&name)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE members SET email = COALESCE($2, email), name = COALESCE($3, name) WHERE user_id = $1",
            )
            .bind(id)
            .bind(&email)
            .bind(&name)
            .execute(&mut *conn)
            .await?;
        }
        granted @ (UserEvent::SystemRoleGranted {} | UserEvent::SystemRoleRevoked {}) => {
            sqlx::query(
                "UPDATE users SET system_role = $2, version = $3, updated_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(matches!(granted, UserEvent::SystemRoleGranted {}))
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        UserEvent::SignedIn { .. } | UserEvent::SignedOut { .. } => {}
        UserEvent::Erased {} => {
            // Its memberships were removed before; the user goes from the lists too.
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM members WHERE user_id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

async fn apply_members(
    conn: &mut PgConnection,
    organization_id: Uuid,
    event: &RecordedEvent,
) -> anyhow::Result<()> {
    let at = event.recorded_at;
    match event.decode::<MembersEvent>()? {
        MembersEvent::Added { user_id, role } => {
            sqlx::query(
                "INSERT INTO members (organization_id, user_id, role, email, name, created_at, updated_at) \
                 SELECT $1, $2, $3, u.email, u.name, $4, $4 FROM (SELECT 1) one \
                 LEFT JOIN users u ON u.id = $2 \
                 ON CONFLICT (organization_id, user_id) DO NOTHING",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(role.to_string())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        MembersEvent::RoleChanged { user_id, role, .. } => {
            sqlx::query(
                "UPDATE members SET role = $3, updated_at = $4 WHERE organization_id = $1 AND user_id = $2",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(role.to_string())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        MembersEvent::Removed { user_id } => {
            sqlx::query("DELETE FROM members WHERE organization_id = $1 AND user_id = $2")
                .bind(organization_id)
                .bind(user_id)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}
