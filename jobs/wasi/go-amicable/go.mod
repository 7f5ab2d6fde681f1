module amicable

go 1.24
