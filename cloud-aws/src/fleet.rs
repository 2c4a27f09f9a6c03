//! A fleet's resources beyond EC2: IAM roles and instance profiles (under
//! the fleet's IAM path), Secrets Manager secrets (by name prefix), and
//! who the caller is (STS); the auto-scaling groups are in `fleet_asg`. Plain data
//! in and out, one call per method (or the few one change needs).

use aws_sdk_iam::types::Tag as IamTag;
use aws_sdk_secretsmanager::types::{
    Filter as SecretFilter, FilterNameStringType, Tag as SecretTag,
};
use zeroize::Zeroizing;

use crate::{sdk_config, AwsError, Ec2, Settings};

/// The clients of one account and region.
#[derive(Clone, Debug)]
pub struct FleetClients {
    pub ec2: Ec2,
    iam: aws_sdk_iam::Client,
    pub(crate) asg: aws_sdk_autoscaling::Client,
    secrets: aws_sdk_secretsmanager::Client,
    sts: aws_sdk_sts::Client,
}

/// An IAM role with its inline policy of the fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub path: String,
    /// Who may assume it, as IAM returns it (URL-encoded JSON).
    pub trust: String,
    /// The inline policy named as asked, if it has one.
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub kms_key: String,
}

fn iam_tags(pairs: &[(&str, &str)]) -> Result<Vec<IamTag>, AwsError> {
    pairs
        .iter()
        .map(|(k, v)| {
            IamTag::builder()
                .key(*k)
                .value(*v)
                .build()
                .map_err(|e| AwsError::refused("CreateRole", k, e.to_string()))
        })
        .collect()
}

impl FleetClients {
    pub async fn connect(s: &Settings) -> FleetClients {
        let config = sdk_config(s).await;
        FleetClients {
            ec2: Ec2::from_config(&config),
            iam: aws_sdk_iam::Client::new(&config),
            asg: aws_sdk_autoscaling::Client::new(&config),
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
        }
    }

    /// The account these credentials act in.
    pub async fn account(&self) -> Result<String, AwsError> {
        const API: &str = "GetCallerIdentity";
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, "", e))?;
        out.account()
            .map(str::to_string)
            .ok_or_else(|| AwsError::missing(API, "", "Account"))
    }

    /// The roles under IAM path `path`, each with its inline policy `policy`.
    pub async fn roles(&self, path: &str, policy: &str) -> Result<Vec<Role>, AwsError> {
        let mut roles = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .iam
                .list_roles()
                .path_prefix(path)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ListRoles", path, e))?;
            for r in out.roles() {
                let inline = match self
                    .iam
                    .get_role_policy()
                    .role_name(r.role_name())
                    .policy_name(policy)
                    .send()
                    .await
                {
                    Ok(p) => Some(p.policy_document().to_string()),
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|s| s.is_no_such_entity_exception()) =>
                    {
                        None
                    }
                    Err(e) => return Err(AwsError::from_sdk("GetRolePolicy", r.role_name(), e)),
                };
                roles.push(Role {
                    name: r.role_name().to_string(),
                    path: r.path().to_string(),
                    trust: r
                        .assume_role_policy_document()
                        .unwrap_or_default()
                        .to_string(),
                    policy: inline,
                });
            }
            marker = out.marker().map(str::to_string);
            if !out.is_truncated() || marker.is_none() {
                return Ok(roles);
            }
        }
    }

    pub async fn create_role(
        &self,
        name: &str,
        path: &str,
        trust: &str,
        tag_pairs: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        self.iam
            .create_role()
            .role_name(name)
            .path(path)
            .assume_role_policy_document(trust)
            .set_tags(Some(iam_tags(tag_pairs)?))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateRole", name, e))?;
        Ok(())
    }

    pub async fn update_trust(&self, name: &str, trust: &str) -> Result<(), AwsError> {
        self.iam
            .update_assume_role_policy()
            .role_name(name)
            .policy_document(trust)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("UpdateAssumeRolePolicy", name, e))?;
        Ok(())
    }

    pub async fn put_role_policy(
        &self,
        role: &str,
        policy: &str,
        document: &str,
    ) -> Result<(), AwsError> {
        self.iam
            .put_role_policy()
            .role_name(role)
            .policy_name(policy)
            .policy_document(document)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("PutRolePolicy", role, e))?;
        Ok(())
    }

    /// Removes a role and its inline policy `policy`.
    pub async fn delete_role(&self, name: &str, policy: &str) -> Result<(), AwsError> {
        match self
            .iam
            .delete_role_policy()
            .role_name(name)
            .policy_name(policy)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) => {}
            Err(e) => return Err(AwsError::from_sdk("DeleteRolePolicy", name, e)),
        }
        self.iam
            .delete_role()
            .role_name(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteRole", name, e))?;
        Ok(())
    }

    /// The instance profiles under `path`, each with its roles' names.
    pub async fn instance_profiles(
        &self,
        path: &str,
    ) -> Result<Vec<(String, Vec<String>)>, AwsError> {
        let mut profiles = Vec::new();
        let mut marker = None;
        loop {
            let out = self
                .iam
                .list_instance_profiles()
                .path_prefix(path)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ListInstanceProfiles", path, e))?;
            for p in out.instance_profiles() {
                let roles = p
                    .roles()
                    .iter()
                    .map(|r| r.role_name().to_string())
                    .collect();
                profiles.push((p.instance_profile_name().to_string(), roles));
            }
            marker = out.marker().map(str::to_string);
            if !out.is_truncated() || marker.is_none() {
                return Ok(profiles);
            }
        }
    }

    /// An instance profile holding `role` (the role first taken out of
    /// any other profile of this name is not needed: a profile holds one).
    pub async fn create_instance_profile(
        &self,
        name: &str,
        path: &str,
        role: &str,
        tag_pairs: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        self.iam
            .create_instance_profile()
            .instance_profile_name(name)
            .path(path)
            .set_tags(Some(iam_tags(tag_pairs)?))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateInstanceProfile", name, e))?;
        self.set_profile_role(name, &[], role).await
    }

    /// Makes `role` the one role of profile `name`.
    pub async fn set_profile_role(
        &self,
        name: &str,
        current: &[String],
        role: &str,
    ) -> Result<(), AwsError> {
        for r in current.iter().filter(|r| *r != role) {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(r)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("RemoveRoleFromInstanceProfile", name, e))?;
        }
        if !current.iter().any(|r| r == role) {
            self.iam
                .add_role_to_instance_profile()
                .instance_profile_name(name)
                .role_name(role)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("AddRoleToInstanceProfile", name, e))?;
        }
        Ok(())
    }

    /// Removes profile `name`, taking its roles out first.
    pub async fn delete_instance_profile(
        &self,
        name: &str,
        roles: &[String],
    ) -> Result<(), AwsError> {
        for r in roles {
            self.iam
                .remove_role_from_instance_profile()
                .instance_profile_name(name)
                .role_name(r)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("RemoveRoleFromInstanceProfile", name, e))?;
        }
        self.iam
            .delete_instance_profile()
            .instance_profile_name(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteInstanceProfile", name, e))?;
        Ok(())
    }

    /// The secrets whose names start with `prefix` and that carry the tag
    /// `key = value`.
    pub async fn secrets(
        &self,
        prefix: &str,
        key: &str,
        value: &str,
    ) -> Result<Vec<Secret>, AwsError> {
        let mut secrets = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .secrets
                .list_secrets()
                .filters(
                    SecretFilter::builder()
                        .key(FilterNameStringType::Name)
                        .values(prefix)
                        .build(),
                )
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("ListSecrets", prefix, e))?;
            for s in out.secret_list() {
                let tagged = s
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value));
                let name = s.name().unwrap_or_default();
                if tagged && name.starts_with(prefix) {
                    secrets.push(Secret {
                        name: name.to_string(),
                        kms_key: s.kms_key_id().unwrap_or_default().to_string(),
                    });
                }
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(secrets);
            }
        }
    }

    pub async fn create_secret(
        &self,
        name: &str,
        kms_key: &str,
        value: &str,
        tag_pairs: &[(&str, &str)],
    ) -> Result<(), AwsError> {
        let tags = tag_pairs
            .iter()
            .map(|(k, v)| SecretTag::builder().key(*k).value(*v).build())
            .collect();
        self.secrets
            .create_secret()
            .name(name)
            .kms_key_id(kms_key)
            .secret_string(value)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("CreateSecret", name, e))?;
        Ok(())
    }

    /// A secret's value (zeroized when dropped).
    pub async fn secret_value(&self, name: &str) -> Result<Zeroizing<String>, AwsError> {
        const API: &str = "GetSecretValue";
        let out = self
            .secrets
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(API, name, e))?;
        out.secret_string()
            .map(|s| Zeroizing::new(s.to_string()))
            .ok_or_else(|| AwsError::missing(API, name, "SecretString"))
    }

    /// Removes a secret at once (no recovery window: `up` can issue its
    /// certificate again).
    pub async fn delete_secret(&self, name: &str) -> Result<(), AwsError> {
        self.secrets
            .delete_secret()
            .secret_id(name)
            .force_delete_without_recovery(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("DeleteSecret", name, e))?;
        Ok(())
    }
}
