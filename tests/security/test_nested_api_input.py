"""Blueprints nested in the API's (workflows, schedules) answer bad text with the API's own 422.

The console's NUL guard skipped requests of the ``api`` blueprint but not of ``api.workflows``
or ``api.schedules``, so a NUL in their query or path got the console's refusal turned into a
bare ``400 BAD REQUEST`` that the OpenAPI document does not list (found by schemathesis).
"""

from __future__ import annotations

import pytest

from webapp.accounts.tokens import create_token


@pytest.fixture
def client(make_app, backend):
    app = make_app(backend)
    with app.app_context():
        _, secret = create_token("nested-input", reach="all")
    test_client = app.test_client()
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    return test_client


@pytest.mark.parametrize("path, field", [
    ("/api/workflows?name=a%00b", "name"),
    ("/api/workflows?status=%00", "status"),
    ("/api/schedules/a%00b", "name"),
    ("/api/schedules/a%00b/runs", "name"),
])
def test_nul_in_a_nested_api_blueprint_is_a_422_naming_the_field(client, path, field):
    response = client.get(path)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["error"]["field"] == field
