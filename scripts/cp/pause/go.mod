module teal.local/cp/pause

go 1.26.0
