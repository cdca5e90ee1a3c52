//! The agent forks Python and Node.js runtimes from templates only under the bootstrap it
//! models (`ember_agent::container::template::expected_bootstrap`,
//! `ember_agent::container::node_template::expected_bootstrap`): it must be the one
//! provisioned; and a Node.js template loads the addon provisioning builds, by its name.

#[test]
fn the_agent_models_the_provisioned_bootstrap() {
    for minor in [9, 10, 11, 12, 13, 14] {
        assert_eq!(
            ember_agent::container::template::expected_bootstrap(minor),
            ember_runtimes::bootstrap_script(minor),
            "python3.{minor}"
        );
    }
}

#[test]
fn the_agent_models_the_provisioned_node_bootstrap_and_addon() {
    for major in [18, 20, 22, 24] {
        assert_eq!(
            ember_agent::container::node_template::expected_bootstrap(major),
            ember_runtimes::node_bootstrap_script(major),
            "nodejs{major}.x"
        );
    }
    assert_eq!(
        ember_agent::container::node_template::ADDON,
        ember_runtimes::TEMPLATE_ADDON
    );
}
