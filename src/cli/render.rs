//! `kuberaft render -f cluster.yaml`: prints the objects the operator would create for each
//! `RaftCluster` in the file, from the operator's own builders (like `helm template`), so they can
//! be reviewed and validated offline. The API server assigns a resource's uid; render uses a fixed
//! placeholder for it (it appears in owner references and as the cluster token).

use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use kube::ResourceExt;

use super::{write_stdout, CliError};
use crate::operator::builders::bootstrap_objects;
use crate::operator::crd::RaftCluster;

/// The uid render gives a resource that has none.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Clone, Debug, Args)]
pub struct RenderArgs {
    /// A YAML file with one or more RaftCluster documents; `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The namespace of resources that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub fn run(args: RenderArgs) -> Result<(), CliError> {
    let text = if args.file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| CliError::Failed(format!("read stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(&args.file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.file.display())))?
    };
    write_stdout(render(&text, &args.namespace)?.as_bytes())
}

/// The rendered objects of every RaftCluster in `text`, as multi-document YAML.
pub fn render(text: &str, namespace: &str) -> Result<String, CliError> {
    let mut out = String::new();
    let mut clusters = 0;
    // Empty documents are skipped (and not counted); any other document must be a RaftCluster.
    for (number, value) in serde_saphyr::read::<_, serde_json::Value>(&mut text.as_bytes()).enumerate() {
        let value = value.map_err(|e| CliError::Usage(format!("document {}: not YAML: {e}", number + 1)))?;
        let kind = value.get("kind").and_then(serde_json::Value::as_str).unwrap_or_default();
        if kind != "RaftCluster" {
            return Err(CliError::Usage(format!(
                "document {}: kind is {kind:?}; render takes RaftCluster resources",
                number + 1
            )));
        }
        let mut cluster: RaftCluster = serde_json::from_value(value)
            .map_err(|e| CliError::Usage(format!("document {}: not a valid RaftCluster: {e}", number + 1)))?;
        if cluster.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(CliError::Usage(format!("document {}: metadata.name is missing", number + 1)));
        }
        let problems = cluster.spec.problems();
        if !problems.is_empty() {
            return Err(CliError::Usage(format!("RaftCluster {}: {}", cluster.name_any(), problems.join("; "))));
        }
        cluster.metadata.namespace.get_or_insert_with(|| namespace.to_string());
        cluster.metadata.uid.get_or_insert_with(|| PLACEHOLDER_UID.to_string());
        let objects = bootstrap_objects(&cluster).map_err(|e| CliError::Failed(e.to_string()))?;
        for object in objects {
            let yaml = serde_saphyr::to_string(&object).map_err(|e| CliError::Failed(format!("encode YAML: {e}")))?;
            out.push_str("---\n");
            out.push_str(&yaml);
        }
        clusters += 1;
    }
    if clusters == 0 {
        return Err(CliError::Usage("no RaftCluster in the input".to_string()));
    }
    Ok(out)
}
