//! Network faults between member addresses with nftables: every rule lives in one table that
//! is deleted when the `Faults` value is dropped (also when a test fails).

use std::process::Command;

pub struct Faults {
    table: String,
}

pub fn nft_available() -> bool {
    Command::new("nft").args(["list", "tables"]).output().map(|o| o.status.success()).unwrap_or(false)
}

impl Faults {
    pub fn new(table: &str) -> Faults {
        let faults = Faults { table: table.to_string() };
        faults.heal();
        faults
    }

    /// Replaces every rule with drops of the given (from, to) address pairs.
    pub fn drop_pairs(&self, pairs: &[(String, String)]) {
        self.heal();
        if pairs.is_empty() {
            return;
        }
        let mut rules = format!(
            "table ip {} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n",
            self.table
        );
        for (from, to) in pairs {
            rules.push_str(&format!("  ip saddr {from} ip daddr {to} drop\n"));
        }
        rules.push_str(" }\n}\n");
        let path = std::env::temp_dir().join(format!("{}.nft", self.table));
        std::fs::write(&path, rules).expect("write nft rules");
        let out = Command::new("nft").arg("-f").arg(&path).output().expect("run nft");
        assert!(out.status.success(), "nft failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Cuts every link between the two groups, both ways.
    pub fn split(&self, a: &[String], b: &[String]) {
        let mut pairs = Vec::new();
        for x in a {
            for y in b {
                pairs.push((x.clone(), y.clone()));
                pairs.push((y.clone(), x.clone()));
            }
        }
        self.drop_pairs(&pairs);
    }

    pub fn heal(&self) {
        let _ = Command::new("nft").args(["delete", "table", "ip", &self.table]).output();
    }
}

impl Drop for Faults {
    fn drop(&mut self) {
        self.heal();
    }
}
