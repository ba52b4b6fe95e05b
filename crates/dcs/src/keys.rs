//! Patroni's key layout: `<namespace>/<scope>/<name>`.

/// Builds the keys of one cluster.
#[derive(Debug, Clone)]
pub struct KeyLayout {
    prefix: String,
}

impl KeyLayout {
    /// `namespace` as in Patroni's config (default `/service`); slashes are normalised so
    /// `/db/` and `/db` give the same keys.
    pub fn new(namespace: &str, scope: &str) -> Self {
        let ns = namespace.trim_matches('/');
        let prefix = if ns.is_empty() {
            format!("/{scope}/")
        } else {
            format!("/{ns}/{scope}/")
        };
        KeyLayout { prefix }
    }
    /// `/<namespace>/<scope>/`, with the trailing slash.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn initialize(&self) -> String {
        format!("{}initialize", self.prefix)
    }
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }
    pub fn history(&self) -> String {
        format!("{}history", self.prefix)
    }
    pub fn failover(&self) -> String {
        format!("{}failover", self.prefix)
    }
    pub fn sync(&self) -> String {
        format!("{}sync", self.prefix)
    }
    pub fn status(&self) -> String {
        format!("{}status", self.prefix)
    }
    pub fn failsafe(&self) -> String {
        format!("{}failsafe", self.prefix)
    }
    pub fn members_prefix(&self) -> String {
        format!("{}members/", self.prefix)
    }
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }

    pub fn poolers_prefix(&self) -> String {
        format!("{}poolers/", self.prefix)
    }
    pub fn pooler(&self, id: &str) -> String {
        format!("{}poolers/{id}", self.prefix)
    }

    /// Keys whose change wakes a waiting HA loop at once: who leads, the dynamic config,
    /// pending requests, and poolers (a new leader waits for their acknowledgement; they
    /// write only when what they route by changes). Member and status keys change on
    /// every tick of every member; waking on them would make each member tick whenever
    /// any other does.
    pub fn wakes_watchers(&self, key: &str) -> bool {
        key.strip_prefix(self.prefix.as_str()).is_some_and(|rest| {
            matches!(
                rest,
                "leader" | "config" | "failover" | "sync" | "initialize"
            ) || rest.starts_with("poolers/")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tutorial_namespace_gives_patroni_keys() {
        let k = KeyLayout::new("/db/", "postgres");
        assert_eq!(k.leader(), "/db/postgres/leader");
        assert_eq!(k.member("node1"), "/db/postgres/members/node1");
        assert_eq!(
            KeyLayout::new("/service", "x").config(),
            "/service/x/config"
        );
    }
}
