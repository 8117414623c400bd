def test_hostname(host):
    assert host.check_output("hostname") == "mol-common"
