//! The IAM documents of a fleet, least privilege written out: what an
//! appliance's role may do, who may assume it, and the discovery role each
//! account lends the others. Canonical JSON (keys sorted, no spaces), so
//! what IAM returns compares equal to what the plan wants.

use serde_json::{json, Value};

use super::file::{Fleet, FleetRegion};
use super::model::{iam_path, FLEET_TAG, MESH_TAG};

/// The inline policy's name on every role of the fleet.
pub const POLICY_NAME: &str = "meshgate";

/// `value` as canonical JSON: object keys sorted at every depth.
pub fn canonical(value: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    // serde_json may keep insertion order (its preserve_order feature):
    // write the sorted keys by hand.
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                out.push('{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(v, out);
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(&sort(value), &mut out);
    out
}

/// A document as IAM returns it (URL-encoded JSON) or as written, in
/// canonical form; `None` if it is not JSON.
pub fn canonical_text(text: &str) -> Option<String> {
    let decoded = if text.trim_start().starts_with('{') {
        text.to_string()
    } else {
        percent_decode(text)?
    };
    serde_json::from_str::<Value>(&decoded)
        .ok()
        .map(|v| canonical(&v))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// EC2 instances may assume an appliance's role.
pub fn ec2_trust() -> String {
    canonical(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "Service": "ec2.amazonaws.com" },
            "Action": "sts:AssumeRole",
        }],
    }))
}

/// What one appliance's role may do, and nothing more: find its peers
/// (DescribeInstances: EC2 grants describes on `*` only), claim its
/// group's routes in the tables tagged for the mesh, turn off the
/// source/destination check of the fleet's interfaces, decrypt the mesh's
/// epoch keys (only with the mesh's encryption context), read its own
/// secret (and decrypt it through Secrets Manager only), and assume the
/// other accounts' discovery roles.
pub fn appliance_policy(
    fleet: &Fleet,
    region: &FleetRegion,
    account: &str,
    secret: &str,
    discovery_roles: &[String],
) -> String {
    let r = &region.name;
    let mut statements = vec![
        json!({
            "Sid": "Discover",
            "Effect": "Allow",
            "Action": ["ec2:DescribeInstances", "ec2:DescribeRouteTables"],
            "Resource": "*",
        }),
        json!({
            "Sid": "ClaimRoutes",
            "Effect": "Allow",
            "Action": ["ec2:CreateRoute", "ec2:ReplaceRoute"],
            "Resource": format!("arn:aws:ec2:{r}:{account}:route-table/*"),
            "Condition": { "StringEquals": {
                format!("ec2:ResourceTag/{MESH_TAG}"): fleet.mesh,
            } },
        }),
        json!({
            "Sid": "SourceDestCheck",
            "Effect": "Allow",
            "Action": "ec2:ModifyNetworkInterfaceAttribute",
            "Resource": format!("arn:aws:ec2:{r}:{account}:network-interface/*"),
            "Condition": { "StringEquals": {
                format!("ec2:ResourceTag/{FLEET_TAG}"): fleet.mesh,
            } },
        }),
        json!({
            "Sid": "EpochKeys",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": fleet.kms_key,
            "Condition": { "StringEquals": {
                "kms:EncryptionContext:meshgate:mesh": fleet.mesh,
            } },
        }),
        json!({
            "Sid": "OwnSecret",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": format!("arn:aws:secretsmanager:{r}:{account}:secret:{secret}-??????"),
        }),
        json!({
            "Sid": "OwnSecretKey",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": region.secrets_key,
            "Condition": { "StringEquals": {
                "kms:ViaService": format!("secretsmanager.{r}.amazonaws.com"),
            } },
        }),
    ];
    if !discovery_roles.is_empty() {
        statements.push(json!({
            "Sid": "OtherAccounts",
            "Effect": "Allow",
            "Action": "sts:AssumeRole",
            "Resource": discovery_roles,
        }));
    }
    canonical(&json!({ "Version": "2012-10-17", "Statement": statements }))
}

/// The discovery role of one account: the fleet's appliance roles of the
/// other accounts (and nothing else there) may assume it.
pub fn discovery_trust(fleet: &Fleet, other_accounts: &[String]) -> String {
    let roots: Vec<String> = other_accounts
        .iter()
        .map(|a| format!("arn:aws:iam::{a}:root"))
        .collect();
    let roles: Vec<String> = other_accounts
        .iter()
        .map(|a| format!("arn:aws:iam::{a}:role{}*", iam_path(fleet)))
        .collect();
    canonical(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": roots },
            "Action": "sts:AssumeRole",
            "Condition": { "ArnLike": { "aws:PrincipalArn": roles } },
        }],
    }))
}

/// The discovery role lists instances, nothing more.
pub fn discovery_policy() -> String {
    canonical(&json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": "ec2:DescribeInstances",
            "Resource": "*",
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_is_the_same_whatever_the_order_or_encoding() {
        let a = canonical_text(r#"{"b": [1, {"y": 1, "x": 2}], "a": "s p"}"#).unwrap();
        let b = canonical_text(
            "%7B%22a%22%3A%22s%20p%22%2C%22b%22%3A%5B1%2C%7B%22x%22%3A2%2C%22y%22%3A1%7D%5D%7D",
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, r#"{"a":"s p","b":[1,{"x":2,"y":1}]}"#);
        assert_eq!(canonical_text("%7Bnot json"), None);
        assert_eq!(canonical_text("%zz"), None);
    }
}
