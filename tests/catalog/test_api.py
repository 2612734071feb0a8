"""The REST API and web page: 401 without a token, 403 for a wrong role, 404 for hidden data."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from catalog.api import create_app


@pytest.fixture
def api(catalog, ingest, hospital):
    """A catalog with lung-ct v1 published and granted to radiology, brain-mr pending review."""
    ingest(transfer_id="t-lung")
    ingest("brain-mr", transfer_id="t-brain", title="Glioma MRI", modality="MR", body_part="HEAD")
    catalog.publish("lung-ct", 1, actor="admin:test")
    catalog.grant("lung-ct", 1, group="radiology", actor="admin:test")
    catalog.add_provider("city-hospital", b"pem", "SHA256:city", actor="admin:test")
    catalog.record_transfer(
        "t-city", "city-hospital", dataset_name="heart-us", k=2, n=3, share_length=9
    )
    tokens = {
        "admin": catalog.create_token("root", "admin", actor="admin:test"),
        "alice": catalog.create_token("alice", "researcher", ["radiology"], actor="admin:test"),
        "bob": catalog.create_token("bob", "researcher", ["cardiology"], actor="admin:test"),
        "sam": catalog.create_token("sam", "student", ["course-101"], actor="admin:test"),
        "st-mary": hospital[1],  # the provider's upload token
        "city": catalog.create_token("city-hospital", "provider", actor="admin:test"),
    }
    client = TestClient(create_app(catalog))

    def call(method, path, who=None, **kwargs):
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        return client.request(method, path, headers=headers, **kwargs)

    call.client = client
    call.tokens = tokens
    return call


def test_unauthenticated_is_401(api):
    for path in ("/api/datasets", "/api/transfers", "/api/me", "/api/datasets/lung-ct"):
        response = api("GET", path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == "Bearer"
    bad = api.client.get("/api/datasets", headers={"Authorization": "Bearer enc_forged"})
    assert bad.status_code == 401 and "invalid" in bad.json()["detail"]


def test_wrong_role_is_403(api):
    assert api("POST", "/api/datasets/lung-ct/versions/1/publish", "alice").status_code == 403
    assert api("POST", "/api/datasets/brain-mr/versions/1/publish", "sam").status_code == 403
    assert (
        api(
            "POST", "/api/datasets/lung-ct/versions/1/grants", "bob", json={"user": "bob"}
        ).status_code
        == 403
    )
    assert api("GET", "/api/datasets", "st-mary").status_code == 403
    assert api("GET", "/api/transfers", "alice").status_code == 403
    assert api("GET", "/api/audit", "sam").status_code == 403
    assert (
        "needs admin"
        in api("PATCH", "/api/datasets/lung-ct", "alice", json={"title": "x"}).json()["detail"]
    )


def test_provider_sees_only_its_own_transfers(api):
    mine = api("GET", "/api/transfers", "st-mary").json()
    assert sorted(t["transfer_id"] for t in mine) == ["t-brain", "t-lung"]
    assert all(t["state"] == "cataloged" for t in mine)
    theirs = api("GET", "/api/transfers", "city").json()
    assert [(t["transfer_id"], t["state"]) for t in theirs] == [("t-city", "receiving")]
    assert api("GET", "/api/transfers/t-city", "st-mary").status_code == 404
    assert api("GET", "/api/transfers/t-lung", "st-mary").json()["dataset_version"] == 1
    assert len(api("GET", "/api/transfers", "admin").json()) == 3
    assert api("GET", "/api/me", "st-mary").json() == {
        "name": "st-mary",
        "role": "provider",
        "groups": [],
    }


def test_researcher_sees_only_granted_versions(api):
    listed = api("GET", "/api/datasets", "alice").json()
    assert [d["name"] for d in listed] == ["lung-ct"]
    assert [v["version"] for v in listed[0]["versions"]] == [1]
    detail = api("GET", "/api/datasets/lung-ct/versions/1", "alice").json()
    assert detail["summary"]["file_count"] == 8
    assert "store_location" not in detail and "grants" not in detail
    assert api("GET", "/api/datasets/brain-mr", "alice").status_code == 404
    assert api("GET", "/api/datasets/brain-mr/versions/1", "alice").status_code == 404
    assert api("GET", "/api/datasets/lung-ct", "bob").status_code == 404
    assert api("GET", "/api/datasets", "bob").json() == []
    assert api("GET", "/api/datasets", "sam").json() == []
    assert [d["name"] for d in api("GET", "/api/search?q=lung", "alice").json()] == ["lung-ct"]
    assert api("GET", "/api/search?q=glioma", "alice").json() == []
    mounts = api("GET", "/api/mounts", "alice").json()
    assert [(m["name"], m["version"]) for m in mounts] == [("lung-ct", 1)]
    assert "wrapped_key" not in mounts[0]


def test_admin_curates_publish_grant_edit_revoke(api):
    assert [d["name"] for d in api("GET", "/api/datasets", "admin").json()] == [
        "brain-mr",
        "lung-ct",
    ]
    assert api("GET", "/api/datasets/brain-mr/versions/1", "admin").json()["store_location"]
    early = api(
        "POST", "/api/datasets/brain-mr/versions/1/grants", "admin", json={"group": "cardiology"}
    )
    assert early.status_code == 409 and "only published versions" in early.json()["detail"]
    published = api("POST", "/api/datasets/brain-mr/versions/1/publish", "admin")
    assert published.status_code == 200 and published.json()["status"] == "published"
    granted = api(
        "POST",
        "/api/datasets/brain-mr/versions/1/grants",
        "admin",
        json={"group": "cardiology", "expires": "2099-12-31"},
    )
    assert granted.status_code == 201 and granted.json()["expires_at"].startswith("2100-01-01")
    assert [d["name"] for d in api("GET", "/api/datasets", "bob").json()] == ["brain-mr"]
    edited = api("PATCH", "/api/datasets/brain-mr", "admin", json={"title": "Glioma MRI (curated)"})
    assert edited.json()["title"] == "Glioma MRI (curated)"
    assert len(api("GET", "/api/datasets/brain-mr/versions/1/grants", "admin").json()) == 1
    revoked = api("DELETE", "/api/datasets/brain-mr/versions/1/grants?group=cardiology", "admin")
    assert revoked.status_code == 200
    assert api("GET", "/api/datasets", "bob").json() == []
    retired = api(
        "POST", "/api/datasets/lung-ct/versions/1/retire", "admin", json={"reason": "superseded"}
    )
    assert retired.json()["status"] == "retired"
    assert api("GET", "/api/datasets", "alice").json() == []
    actions = [e["action"] for e in api("GET", "/api/audit?limit=5", "admin").json()]
    assert actions[:2] == ["version.retire", "grant.revoke"]


def test_clear_errors_over_the_api(api):
    assert api("GET", "/api/datasets/nope", "admin").json() == {"detail": "unknown dataset 'nope'"}
    assert api("POST", "/api/datasets/lung-ct/versions/9/publish", "admin").status_code == 404
    bad = api(
        "POST", "/api/datasets/lung-ct/versions/1/grants", "admin", json={"group": "a", "user": "b"}
    )
    assert bad.status_code == 400 and "exactly one" in bad.json()["detail"]
    past = api(
        "POST",
        "/api/datasets/lung-ct/versions/1/grants",
        "admin",
        json={"user": "b", "expires": "2001-01-01"},
    )
    assert past.status_code == 400 and "in the past" in past.json()["detail"]
    assert api("GET", "/api/search?modality=C%20T", "admin").status_code == 400


def test_openapi_lists_the_endpoints(api):
    spec = api.client.get("/openapi.json").json()
    assert "/api/datasets/{name}/versions/{version}/grants" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_web_page_lists_what_the_caller_may_see(api):
    login = api.client.get("/")
    assert login.status_code == 401 and "Sign in" in login.text
    page = api("GET", "/", "alice")
    assert page.status_code == 200
    assert "Lung CT screening" in page.text and "Glioma" not in page.text
    assert "passed, 0 error(s), 1 warning(s)" in page.text
    assert "<td>8</td>" in page.text  # file count
    admin_page = api("GET", "/", "admin").text
    assert "Glioma MRI" in admin_page and "pending-review" in admin_page
    assert "No dataset has been granted" in api("GET", "/", "bob").text
    assert "Glioma" in api("GET", "/?q=glioma", "admin").text


def test_web_login_sets_a_cookie_for_pages_only(api):
    client = api.client
    assert client.post("/login", data={"token": "enc_wrong"}).status_code == 401
    response = client.post("/login", data={"token": api.tokens["alice"]}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "Lung CT screening" in client.get("/").text
    # The cookie is not an API credential: mutations need the bearer header.
    assert client.get("/api/datasets").status_code == 401
    client.post("/logout")
    assert client.get("/").status_code == 401


def test_html_escapes_dataset_text(catalog, ingest):
    ingest("xss", title="<script>alert(1)</script>")
    token = catalog.create_token("root", "admin", actor="admin:test")
    page = TestClient(create_app(catalog)).get("/", headers={"Authorization": f"Bearer {token}"})
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text


def test_page_session_stays_under_the_mount_prefix(catalog, ingest):
    """Served under the hub at /services/catalog/, sign-in and sign-out stay in that prefix."""
    from fastapi import FastAPI

    ingest("mounted", title="Mounted catalog dataset")
    token = catalog.create_token("root", "admin", actor="admin:test")
    outer = FastAPI()
    outer.mount("/services/catalog", create_app(catalog, logout_url="/hub/logout"))
    client = TestClient(outer)
    response = client.post("/services/catalog/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/services/catalog/"
    assert "path=/services/catalog/" in response.headers["set-cookie"].lower()
    assert "Mounted catalog dataset" in client.get("/services/catalog/").text
    out = client.post("/services/catalog/logout", follow_redirects=False)
    assert out.headers["location"] == "/hub/logout"
    assert "path=/services/catalog/" in out.headers["set-cookie"].lower()
    assert client.get("/services/catalog/").status_code == 401


def test_no_page_loads_scripts_from_the_internet(catalog):
    client = TestClient(create_app(catalog))
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    assert client.get("/openapi.json").json()["info"]["title"] == "Enclave dataset catalog"
