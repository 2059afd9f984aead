//! What a framework takes offers for: its roles (its `role` file), whether it takes any
//! (`suppressed`, `revive`), and a role's weight and quota (`roles/<role>/{weight,...}`).

use tracing::info;

use super::writes::Writer;
use super::{refuse, Leader, Refusal};
use crate::acls::Action;
use crate::allocator::drf::is_within;
use crate::allocator::roles::{parse_roles, parse_setting, validate_role};
use crate::state::clients::WriteId;
use crate::state::Command;

impl Leader {
    /// Sets a framework's roles: its owner (or root) may, for roles the ACLs let the mount's
    /// principal register frameworks in. Its offers for roles it left are rescinded.
    pub(super) async fn set_roles(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        writer: &Writer,
        text: &str,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, None)?;
        let roles = parse_roles(text).map_err(|e| refuse(libc::EINVAL, e))?;
        for role in &roles {
            self.permit(writer, Action::RegisterFramework, role)?;
        }
        let r = self
            .commit_write(
                write,
                Command::SetFrameworkRoles {
                    framework_id: fw.id.clone(),
                    roles: roles.clone(),
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ENOENT, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        info!(framework = %fw.id, roles = ?roles, "framework roles set");
        self.board.remove_offers_where(
            |o| o.framework_id == fw.id && !roles.contains(&o.role),
            "the framework left the offer's role",
            true,
        );
        self.reallocate();
        Ok(r.index)
    }

    /// Stops (`1`) or resumes (`0`) offers to a framework; `revive` resumes them and also
    /// clears its decline filters, as Mesos's REVIVE. Suppressing rescinds its offers.
    pub(super) async fn suppress(
        &self,
        write: Option<&WriteId>,
        framework: &str,
        writer: &Writer,
        text: &str,
        revive: bool,
    ) -> Result<u64, Refusal> {
        let fw = self.owned_framework(framework, writer, None)?;
        let suppressed = match (revive, text.trim()) {
            (true, _) => false,
            (false, "1") => true,
            (false, "0") => false,
            (false, other) => {
                return Err(refuse(
                    libc::EINVAL,
                    format!("write 1 to stop offers or 0 to take them again, not {other:?}"),
                ))
            }
        };
        let r = self
            .commit_write(
                write,
                Command::SuppressFramework {
                    framework_id: fw.id.clone(),
                    suppressed,
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::ENOENT, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        if revive {
            self.alloc
                .lock()
                .expect("alloc lock")
                .filters
                .retain(|(f, _), _| *f != fw.id);
        }
        info!(framework = %fw.id, suppressed, revive, "offers {}", if suppressed { "suppressed" } else { "resumed" });
        if suppressed {
            self.board.remove_offers_where(
                |o| o.framework_id == fw.id,
                "the framework suppressed offers",
                true,
            );
        }
        self.reallocate();
        Ok(r.index)
    }

    /// Sets a role's weight, guarantee or limit: root on its machine may, where the ACLs let
    /// the mount's principal update that role's quota. Outstanding offers in the role (and
    /// roles under it) are rescinded, so that none stands beyond a new limit.
    pub(super) async fn configure_role(
        &self,
        write: Option<&WriteId>,
        role: &str,
        file: &str,
        writer: &Writer,
        text: &str,
    ) -> Result<u64, Refusal> {
        validate_role(role)
            .map_err(|e| refuse(libc::EINVAL, format!("invalid role {role:?}: {e}")))?;
        if !writer.is_root() {
            return Err(refuse(
                libc::EACCES,
                format!(
                    "only root may set a role's weight and quota ({} tried)",
                    writer.describe()
                ),
            ));
        }
        self.permit(writer, Action::UpdateQuotas, role)?;
        let setting = parse_setting(file, text).map_err(|e| refuse(libc::EINVAL, e))?;
        let now = self
            .hub
            .read(|s| s.roles.get(role).cloned().unwrap_or_default());
        now.with(&setting)
            .map_err(|e| refuse(libc::EINVAL, format!("role {role:?}: {e}")))?;
        let r = self
            .commit_write(
                write,
                Command::ConfigureRole {
                    role: role.to_string(),
                    setting: setting.clone(),
                },
            )
            .await?;
        if let Some(e) = r.applied.error {
            return Err(refuse(libc::EINVAL, e.to_string()));
        }
        if let Some(first) = r.applied.duplicate_of {
            return Ok(first);
        }
        info!(role, ?setting, "role configured");
        self.board.remove_offers_where(
            |o| is_within(&o.role, role),
            "the role's weight or quota changed",
            true,
        );
        self.reallocate();
        Ok(r.index)
    }
}
