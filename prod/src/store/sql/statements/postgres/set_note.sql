UPDATE runs SET note = $1 WHERE id = $2
