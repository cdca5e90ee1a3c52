"""Tags on functions, end to end: TagResource, UntagResource, ListTags, `Tags` on CreateFunction and
in GetFunction, through boto3, the AWS CLI, the AWS SDK for JavaScript v3 and the ember CLI; AWS's
limits (50 tags, key and value lengths and characters, the reserved `aws:` prefix), each refusal
changing nothing."""

from __future__ import annotations

import json

import pytest

from ember_e2e import REGION, ROLE, client_error, handler_zip
from js_sdk import js_calls


@pytest.fixture(scope="module")
def account(server):
    return server.make_account("tags")


@pytest.fixture(scope="module")
def lam(server, account):
    return server.lambda_client(account)


@pytest.fixture(scope="module")
def raw(server, account):
    """A client without botocore's own checks, so that the server's are what is tested."""
    return server.lambda_client(account, validate=False)


def create(lam, name, **kwargs):
    return lam.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                               Handler="app.handler", Code={"ZipFile": handler_zip(name)},
                               **kwargs)


def arn(account, name):
    return f"arn:aws:lambda:{REGION}:{account['AccountId']}:function:{name}"


def tags_of(lam, account, name):
    return lam.list_tags(Resource=arn(account, name))["Tags"]


def test_tags_are_created_listed_added_replaced_and_removed(lam, account):
    r = create(lam, "tagged", Tags={"team": "payments", "env": "prod"})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 201
    assert lam.get_function(FunctionName="tagged")["Tags"] == {"team": "payments", "env": "prod"}
    assert tags_of(lam, account, "tagged") == {"team": "payments", "env": "prod"}

    r = lam.tag_resource(Resource=arn(account, "tagged"), Tags={"env": "staging", "cost": ""})
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert tags_of(lam, account, "tagged") == {"team": "payments", "env": "staging", "cost": ""}

    r = lam.untag_resource(Resource=arn(account, "tagged"), TagKeys=["team", "cost", "absent"])
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert tags_of(lam, account, "tagged") == {"env": "staging"}

    lam.untag_resource(Resource=arn(account, "tagged"), TagKeys=["env"])
    assert tags_of(lam, account, "tagged") == {}
    assert "Tags" not in lam.get_function(FunctionName="tagged")


def test_tagging_does_not_change_the_function(lam, account):
    before = create(lam, "tag-keeps-revision")
    lam.tag_resource(Resource=arn(account, "tag-keeps-revision"), Tags={"a": "1"})
    after = lam.get_function_configuration(FunctionName="tag-keeps-revision")
    assert after["RevisionId"] == before["RevisionId"]
    assert after["LastModified"] == before["LastModified"]


def test_a_function_has_at_most_50_tags_and_a_refusal_changes_nothing(lam, raw, account):
    fifty = {f"k{i}": str(i) for i in range(50)}
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        create(raw, "too-many-tags", Tags={**fifty, "one-more": "x"})
    assert "at most 50 tags" in e.value.response["Error"]["Message"]
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName="too-many-tags")

    create(lam, "fifty-tags", Tags={f"k{i}": str(i) for i in range(48)})
    # Two new keys and one replaced value: 50, the limit.
    lam.tag_resource(Resource=arn(account, "fifty-tags"), Tags={"k0": "zero", "k48": "", "k49": ""})
    assert len(tags_of(lam, account, "fifty-tags")) == 50
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        raw.tag_resource(Resource=arn(account, "fifty-tags"), Tags={"k1": "changed", "k50": "x"})
    assert "at most 50 tags" in e.value.response["Error"]["Message"]
    after = tags_of(lam, account, "fifty-tags")
    assert len(after) == 50 and after["k1"] == "1" and after["k0"] == "zero"


@pytest.mark.parametrize("tags, says", [
    ({"aws:createdBy": "me"}, "reserved for AWS"),
    ({"AWS:x": "y"}, "reserved for AWS"),
    ({"k" * 129: "v"}, "it must be 1 to 128"),
    ({"": "v"}, "it must be 1 to 128"),
    ({"k": "v" * 257}, "it must be 0 to 256"),
    ({"semi;colon": "v"}, "contains ';'"),
    ({"k": "new\nline"}, "contains '\\n'"),
])
def test_bad_tags_are_refused_and_change_nothing(lam, raw, account, tags, says):
    name = f"bad-tags-{abs(hash(str(tags))) % 10**8}"
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        create(raw, name, Tags=tags)
    assert says in e.value.response["Error"]["Message"], e.value.response["Error"]
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function(FunctionName=name)

    create(lam, name, Tags={"keep": "me"})
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        raw.tag_resource(Resource=arn(account, name), Tags={"fine": "ok", **tags})
    assert says in e.value.response["Error"]["Message"]
    assert tags_of(lam, account, name) == {"keep": "me"}


def test_values_may_be_unicode_and_use_the_allowed_punctuation(lam, account):
    tags = {"Ünïcode ключ": "värde ٣", "path/to:key": "a=b+c-d@e_f.g", "k": "aws:fine-in-a-value"}
    create(lam, "unicode-tags", Tags=tags)
    assert tags_of(lam, account, "unicode-tags") == tags
    lam.untag_resource(Resource=arn(account, "unicode-tags"), TagKeys=["Ünïcode ключ", "path/to:key"])
    assert tags_of(lam, account, "unicode-tags") == {"k": "aws:fine-in-a-value"}


def test_tags_belong_to_the_unqualified_function(lam, raw, account):
    create(lam, "qualified-tags", Tags={"a": "1"})
    for qualifier in ("$LATEST", "1", "live"):
        for call in (
            lambda r: raw.tag_resource(Resource=r, Tags={"b": "2"}),
            lambda r: raw.list_tags(Resource=r),
            lambda r: raw.untag_resource(Resource=r, TagKeys=["a"]),
        ):
            with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
                call(f"{arn(account, 'qualified-tags')}:{qualifier}")
            assert "not to a version or alias" in e.value.response["Error"]["Message"]
    assert tags_of(lam, account, "qualified-tags") == {"a": "1"}


def test_a_resource_that_is_not_the_callers_function_is_not_found_or_refused(server, lam, raw, account):
    create(lam, "foreign-tags", Tags={"a": "1"})
    for resource in (
        arn(account, "no-such-function"),
        f"arn:aws:lambda:{REGION}:000000000000:function:foreign-tags",
        f"arn:aws:lambda:eu-west-1:{account['AccountId']}:function:foreign-tags",
    ):
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.list_tags(Resource=resource)
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.tag_resource(Resource=resource, Tags={"a": "b"})
        with pytest.raises(lam.exceptions.ResourceNotFoundException):
            lam.untag_resource(Resource=resource, TagKeys=["a"])
    for resource in (
        "foreign-tags",
        f"arn:aws:lambda:{REGION}:{account['AccountId']}:event-source-mapping:"
        "a1b2c3d4-5678-90ab-cdef-11111EXAMPLE",
    ):
        with pytest.raises(raw.exceptions.InvalidParameterValueException):
            raw.list_tags(Resource=resource)
    # Another account's function of that name keeps its tags and is invisible.
    other = server.lambda_client(server.make_account("tags-other"))
    create(other, "foreign-tags", Tags={"owner": "other"})
    assert tags_of(lam, account, "foreign-tags") == {"a": "1"}


def test_tags_go_with_a_deleted_function(lam, account):
    create(lam, "deleted-tags", Tags={"a": "1"})
    lam.delete_function(FunctionName="deleted-tags")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.list_tags(Resource=arn(account, "deleted-tags"))
    create(lam, "deleted-tags")
    assert tags_of(lam, account, "deleted-tags") == {}


def test_untag_without_keys_is_refused(raw, account, lam):
    create(lam, "untag-nothing", Tags={"a": "1"})
    with pytest.raises(raw.exceptions.InvalidParameterValueException) as e:
        raw.untag_resource(Resource=arn(account, "untag-nothing"), TagKeys=[])
    assert "TagKeys is required" in e.value.response["Error"]["Message"]
    code, status, _ = client_error(e)
    assert (code, status) == ("InvalidParameterValueException", 400)
    assert tags_of(lam, account, "untag-nothing") == {"a": "1"}


def test_the_aws_cli_tags_lists_and_untags(server, lam, account):
    create(lam, "cli-tagged")
    resource = arn(account, "cli-tagged")
    rc, _, err = server.aws("lambda", "tag-resource", "--resource", resource,
                            "--tags", "team=payments,env=prod", keys=account)
    assert rc == 0, err
    rc, out, err = server.aws("lambda", "list-tags", "--resource", resource, keys=account)
    assert rc == 0, err
    assert out == {"Tags": {"team": "payments", "env": "prod"}}
    rc, _, err = server.aws("lambda", "untag-resource", "--resource", resource,
                            "--tag-keys", "team", keys=account)
    assert rc == 0, err
    rc, out, err = server.aws("lambda", "get-function", "--function-name", "cli-tagged", keys=account)
    assert rc == 0 and out["Tags"] == {"env": "prod"}, err
    rc, _, err = server.aws("lambda", "tag-resource", "--resource", resource,
                            "--tags", "aws:x=1", keys=account)
    assert rc != 0 and "InvalidParameterValueException" in err and "reserved for AWS" in err, err


def test_the_js_sdk_tags_lists_and_untags(server, lam, account):
    create(lam, "js-tagged", Tags={"a": "1"})
    resource = arn(account, "js-tagged")
    tagged, listed, untagged, got, refused = js_calls(server, [
        ("TagResource", {"Resource": resource, "Tags": {"b": "2", "c": "3"}}),
        ("ListTags", {"Resource": resource}),
        ("UntagResource", {"Resource": resource, "TagKeys": ["a", "c"]}),
        ("GetFunction", {"FunctionName": "js-tagged"}),
        ("TagResource", {"Resource": resource, "Tags": {"aws:x": "1"}}),
    ], keys=account)
    assert tagged["output"]["$metadata"]["httpStatusCode"] == 204
    assert listed["output"]["Tags"] == {"a": "1", "b": "2", "c": "3"}
    assert untagged["output"]["$metadata"]["httpStatusCode"] == 204
    assert got["output"]["Tags"] == {"b": "2"}
    assert refused["error"]["name"] == "InvalidParameterValueException"
    assert refused["error"]["status"] == 400


def test_the_ember_cli_tags_lists_and_untags(server, lam, account, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": account["AccessKeyId"],
           "AWS_SECRET_ACCESS_KEY": account["SecretAccessKey"]}

    def ember(*args):
        return server.run_ember("fn", *args, "--endpoint", server.endpoint, env=env)

    (tmp_path / "app.py").write_text("def handler(e, c):\n    return 1\n")
    r = ember("create", "ember-tagged", "--code", str(tmp_path), "--runtime", "python3.11",
              "--handler", "app.handler", "--tag", "created=yes")
    assert r.returncode == 0, r.stderr
    assert tags_of(lam, account, "ember-tagged") == {"created": "yes"}
    ember("untag", "ember-tagged", "created")

    r = ember("tag", "ember-tagged", "team=payments", "note=a=b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "Tagged ember-tagged"
    r = ember("tags", "ember-tagged")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["note\ta=b", "team\tpayments"]
    r = ember("untag", "ember-tagged", "note")
    assert r.returncode == 0, r.stderr
    r = ember("tags", "ember-tagged", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"Tags": {"team": "payments"}}
    r = ember("get", "ember-tagged")
    assert r.returncode == 0 and "tag: team=payments" in r.stdout, r.stdout
    r = ember("tag", "ember-tagged", "aws:x=1")
    assert r.returncode != 0 and "reserved for AWS" in r.stderr, r.stderr
    r = ember("tag", "ember-tagged", "novalue")
    assert r.returncode != 0 and "is not KEY=VALUE" in r.stderr, r.stderr
    r = ember("tags", "no-such-function")
    assert r.returncode != 0 and "ResourceNotFoundException" in r.stderr, r.stderr
