DELETE FROM sender_pauses WHERE tenant = $1
