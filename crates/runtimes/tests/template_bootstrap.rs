//! A Node.js template loads the addon provisioning builds, by its name: the agent's name for it
//! (`ember_agent::container::node_template::ADDON`) must be the one provisioned. (The bootstrap
//! the agent's templates model is the provisioned one by construction: both are
//! `ember_protocol::bootstrap`'s.)

#[test]
fn the_agent_loads_the_provisioned_node_addon() {
    assert_eq!(
        ember_agent::container::node_template::ADDON,
        ember_runtimes::TEMPLATE_ADDON
    );
}
