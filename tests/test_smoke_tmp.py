def test_smoke(client):
    job = client.enqueue("send_email", {"to": "a@b"})
    assert job.id == 1
    print(job)
