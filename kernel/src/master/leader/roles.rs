//! Role writes: a framework's roles (its `role` file), and a role's weight and quota
//! (`roles/<role>/{weight,guarantee,limit}`).

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
